/* Process lifecycle: exec, fork and exit (included by sensor.bpf.c). */

/* Scratch space: the exec record is too large for the 512-byte stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct starling_exec_record);
} exec_scratch SEC(".maps");

/* clone(2) flag of a new thread, which is not a new process. */
#define STARLING_CLONE_THREAD 0x00010000

#define STARLING_S_IFMT 00170000
#define STARLING_S_IFSOCK 0140000

/* Whether the task's descriptor fd (0 or 1, always inside the fd table)
 * is a socket: a shell whose stdin and stdout are sockets is the classic
 * reverse shell. */
static __always_inline __u32 fd_is_socket(struct task_struct *task, int fd)
{
	struct file *file = fd_file(task, fd);
	if (!file)
		return 0;
	umode_t mode = BPF_CORE_READ(file, f_inode, i_mode);
	return (mode & STARLING_S_IFMT) == STARLING_S_IFSOCK;
}

/* Flags for the exec's image: an unlinked file, and whether it came from
 * memfd_create (the dentry of a memfd is named "memfd:<name>"). */
static __always_inline __u32 exe_flags(struct task_struct *task)
{
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	if (!exe)
		return 0;
	if (BPF_CORE_READ(exe, f_inode, i_nlink) != 0)
		return 0;
	char name[6] = {};
	bpf_probe_read_kernel(name, sizeof(name), BPF_CORE_READ(exe, f_path.dentry, d_name.name));
	int memfd = name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 'f' &&
		    name[4] == 'd' && name[5] == ':';
	return STARLING_EXEC_EXE_DELETED | (memfd ? STARLING_EXEC_EXE_MEMFD : 0);
}

/* An exec of a set-user-id file that made a non-root user root. The ids
 * before the exec are gone; the real ids are the caller's. */
static __always_inline void report_setid_exec(struct starling_exec_record *e)
{
	int uid_gain = e->euid == 0 && e->h.uid != 0;
	int gid_gain = e->egid == 0 && e->h.gid != 0;
	if (!uid_gain && !gid_gain)
		return;
	struct starling_cred_record r = {
		.op = STARLING_CRED_EXEC,
		.old_uid = e->h.uid,
		.old_euid = e->h.uid,
		.old_gid = e->h.gid,
		.old_egid = e->h.gid,
	};
	fill_new_creds(&r);
	r.old_caps = r.new_caps;
	r.h = e->h;
	r.h.kind = STARLING_RECORD_PRIVILEGE;
	submit(&r, sizeof(r));
}

/* One record per successful execve, at sched_process_exec, where the new
 * image's argv is in place. */
SEC("tracepoint/sched/sched_process_exec")
int starling_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	if (!admit(STARLING_RECORD_EXEC))
		return 0;
	__u32 zero = 0;
	struct starling_exec_record *r = bpf_map_lookup_elem(&exec_scratch, &zero);
	struct path_scratch *s = get_path_scratch();
	if (!r || !s)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	fill_header(&r->h, STARLING_RECORD_EXEC);

	unsigned int off = ctx->__data_loc_filename & 0xFFFF;
	long n = bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), (void *)ctx + off);
	r->filename_len = n > 0 ? n - 1 : 0;

	unsigned long arg_start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(task, mm, arg_end);
	unsigned long len = arg_end > arg_start ? arg_end - arg_start : 0;
	r->flags = 0;
	if (len > STARLING_ARGV_MAX) {
		len = STARLING_ARGV_MAX;
		r->flags |= STARLING_EXEC_ARGV_TRUNCATED;
	}
	/* Mask for the verifier: len is now provably within the buffer. */
	len &= (STARLING_ARGV_MAX - 1) | STARLING_ARGV_MAX;
	if (len > STARLING_ARGV_MAX)
		len = STARLING_ARGV_MAX;
	if (len > 0 && bpf_probe_read_user(r->argv, len, (void *)arg_start) < 0)
		len = 0;
	r->argv_len = len;

	if (fd_is_socket(task, 0))
		r->flags |= STARLING_EXEC_STDIN_SOCKET;
	if (fd_is_socket(task, 1))
		r->flags |= STARLING_EXEC_STDOUT_SOCKET;
	r->flags |= exe_flags(task);
	r->tty[0] = 0;
	struct tty_struct *tty = BPF_CORE_READ(task, signal, tty);
	if (tty)
		bpf_core_read_str(r->tty, sizeof(r->tty), &tty->name);

	struct walked w = walk_cwd(s, task);
	if (w.truncated)
		r->flags |= STARLING_EXEC_CWD_TRUNCATED;
	r->cwd_len = copy_path(r->cwd, s, w.start, STARLING_PATH_MAX - w.start);

	const struct cred *cred = BPF_CORE_READ(task, cred);
	r->euid = BPF_CORE_READ(cred, euid.val);
	r->egid = BPF_CORE_READ(cred, egid.val);

	/* Send only the used part of argv. */
	__u64 size = offsetof(struct starling_exec_record, argv) + len;
	if (size > sizeof(*r))
		size = sizeof(*r);
	submit(r, size);
	report_setid_exec(r);
	return 0;
}

/* A new process (not a thread), at task_newtask, which runs in the parent
 * inside copy_process and carries the clone flags. */
SEC("tracepoint/task/task_newtask")
int starling_fork(struct trace_event_raw_task_newtask *ctx)
{
	if (ctx->clone_flags & STARLING_CLONE_THREAD)
		return 0;
	if (!admit(STARLING_RECORD_FORK))
		return 0;
	struct starling_fork_record r = {};
	fill_header(&r.h, STARLING_RECORD_FORK);
	r.child_tgid = ctx->pid;
	submit(&r, sizeof(r));
	return 0;
}

/* The end of a process: sched_process_exit fires for every thread; the
 * process is gone when the last one leaves (signal->live reaches 0 before
 * the tracepoint). Its exit_code is the wait status the parent will see. */
SEC("tracepoint/sched/sched_process_exit")
int starling_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (!admit(STARLING_RECORD_EXIT))
		return 0;
	struct starling_exit_record r = {};
	fill_header(&r.h, STARLING_RECORD_EXIT);
	r.status = BPF_CORE_READ(task, exit_code);
	submit(&r, sizeof(r));
	return 0;
}
