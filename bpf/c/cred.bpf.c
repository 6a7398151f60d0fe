/* Privilege: a process gaining root ids (setuid family) or capabilities
 * (capset) (included by sensor.bpf.c). Exec of set-id files is reported
 * by the exec program (process.bpf.c). Dropping privilege, which daemons
 * do all the time, is not reported. */

/* Whether the credentials after a call give something the ones before
 * did not: a root id that was not root, or new effective capabilities. */
static __always_inline int gains_privilege(struct starling_cred_record *r)
{
	return (r->old_uid != 0 && r->new_uid == 0) || (r->old_euid != 0 && r->new_euid == 0) ||
	       (r->old_gid != 0 && r->new_gid == 0) || (r->old_egid != 0 && r->new_egid == 0) ||
	       (r->new_caps & ~r->old_caps) != 0;
}

/* Fills the "new" side of a credential record from the current task. */
static __always_inline void fill_new_creds(struct starling_cred_record *r)
{
	const struct cred *cred = current_task()->cred;
	r->new_uid = cred->uid.val;
	r->new_euid = cred->euid.val;
	r->new_gid = cred->gid.val;
	r->new_egid = cred->egid.val;
	r->new_caps = caps_of(cred);
}

STARLING_ON_ENTER(setuid, 1, STARLING_CALL_SETUID, STARLING_RECORD_PRIVILEGE)
STARLING_ON_ENTER(setreuid, 2, STARLING_CALL_SETREUID, STARLING_RECORD_PRIVILEGE)
STARLING_ON_ENTER(setresuid, 3, STARLING_CALL_SETRESUID, STARLING_RECORD_PRIVILEGE)
STARLING_ON_ENTER(setgid, 1, STARLING_CALL_SETGID, STARLING_RECORD_PRIVILEGE)
STARLING_ON_ENTER(setregid, 2, STARLING_CALL_SETREGID, STARLING_RECORD_PRIVILEGE)
STARLING_ON_ENTER(setresgid, 3, STARLING_CALL_SETRESGID, STARLING_RECORD_PRIVILEGE)
STARLING_ON_ENTER(capset, 2, STARLING_CALL_CAPSET, STARLING_RECORD_PRIVILEGE)

/* The return of every credential call: compare before and after. */
SEC("tracepoint/syscalls/sys_exit_setuid")
int starling_cred_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pending_call c;
	if (!take_call(ctx, &c) || ctx->ret != 0)
		return 0;
	if (c.call < STARLING_CALL_SETUID || c.call > STARLING_CALL_CAPSET)
		return 0;
	struct starling_cred_record r = {
		.op = c.call - STARLING_CALL_SETUID + STARLING_CRED_SETUID,
		.old_uid = c.uid,
		.old_euid = c.euid,
		.old_gid = c.gid,
		.old_egid = c.egid,
		.old_caps = c.caps,
	};
	fill_new_creds(&r);
	if (!gains_privilege(&r))
		return 0;
	fill_header(&r.h, current_task(), STARLING_RECORD_PRIVILEGE);
	submit(&r, sizeof(r));
	return 0;
}
