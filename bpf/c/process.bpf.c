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

/* Whether an open file is a socket. */
static __always_inline __u32 is_socket(umode_t mode)
{
	return (mode & STARLING_S_IFMT) == STARLING_S_IFSOCK;
}

/* Whether stdin and stdout are sockets: a shell whose stdin and stdout are
 * sockets is the classic reverse shell. Until a process opens more than
 * 64 files its table is the fd_array inside files_struct (files->fdt
 * points at files->fdtab), which BTF types: plain loads. A grown table is
 * an untyped array, read by helper. */
static __always_inline __u32 std_socket_flags(struct task_struct *task)
{
	struct files_struct *files = task->files;
	if (!files)
		return 0;
	umode_t in = 0, out = 0;
	struct fdtable *fdt = files->fdt;
	if ((__u64)fdt == (__u64)&files->fdtab) {
		struct file *f0 = files->fd_array[0];
		struct file *f1 = files->fd_array[1];
		if (f0)
			in = f0->f_inode->i_mode;
		/* A terminal is usually both: one file, read once. */
		if (f1 == f0)
			out = in;
		else if (f1)
			out = f1->f_inode->i_mode;
	} else {
		struct file *std[2] = {};
		if (bpf_probe_read_kernel(std, sizeof(std), fdt->fd) < 0)
			return 0;
		if (std[0])
			in = BPF_CORE_READ(std[0], f_inode, i_mode);
		if (std[1])
			out = BPF_CORE_READ(std[1], f_inode, i_mode);
	}
	return (is_socket(in) ? STARLING_EXEC_STDIN_SOCKET : 0) |
	       (is_socket(out) ? STARLING_EXEC_STDOUT_SOCKET : 0);
}

/* Flags for the exec's image: an unlinked file, and whether it came from
 * memfd_create (the dentry of a memfd is named "memfd:<name>"). */
static __always_inline __u32 exe_flags(struct task_struct *task)
{
	struct file *exe = task->mm->exe_file;
	if (!exe || exe->f_inode->i_nlink != 0)
		return 0;
	char name[6] = {};
	bpf_probe_read_kernel(name, sizeof(name), exe->f_path.dentry->d_name.name);
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
 * image's argv is in place. The program runs on every exec of the host:
 * fields come from typed loads where the kernel's BTF allows, and the
 * record carries only the bytes its strings use. */
SEC("tracepoint/sched/sched_process_exec")
int starling_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct task_struct *task = current_task();
	if (!admit(task, STARLING_RECORD_EXEC))
		return 0;
	__u32 zero = 0;
	struct starling_exec_record *r = bpf_map_lookup_elem(&exec_scratch, &zero);
	struct path_scratch *s = get_path_scratch();
	if (!r || !s)
		return 0;
	fill_header(&r->h, task, STARLING_RECORD_EXEC);
	r->flags = std_socket_flags(task) | exe_flags(task);

	/* data: filename, then cwd, then argv. */
	unsigned int off = ctx->__data_loc_filename & 0xFFFF;
	long n = bpf_probe_read_kernel_str(r->data, STARLING_FILENAME_MAX, (void *)ctx + off);
	__u32 filename_len = n > 0 ? n - 1 : 0;
	STARLING_BOUND(filename_len, 511); /* STARLING_FILENAME_MAX - 1 */
	r->filename_len = filename_len;

	struct walked w = walk_cwd(s, task);
	if (w.truncated)
		r->flags |= STARLING_EXEC_CWD_TRUNCATED;
	__u32 cwd_len = copy_path(r->data + filename_len, s, w.start, STARLING_PATH_MAX - w.start);
	STARLING_BOUND(cwd_len, 511); /* STARLING_PATH_MAX - 1 */
	r->cwd_len = cwd_len;

	struct mm_struct *mm = task->mm;
	unsigned long arg_start = mm->arg_start;
	unsigned long arg_end = mm->arg_end;
	unsigned long len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > STARLING_ARGV_MAX) {
		len = STARLING_ARGV_MAX;
		r->flags |= STARLING_EXEC_ARGV_TRUNCATED;
	}
	STARLING_BOUND(len, 8191); /* (STARLING_ARGV_MAX - 1) | STARLING_ARGV_MAX */
	if (len > STARLING_ARGV_MAX)
		len = STARLING_ARGV_MAX;
	__u32 argv_off = filename_len + cwd_len;
	STARLING_BOUND(argv_off, 1023);
	if (len > 0 && bpf_probe_read_user(r->data + argv_off, len, (void *)arg_start) < 0)
		len = 0;
	r->argv_len = len;

	struct tty_struct *tty = task->signal->tty;
	if (tty)
		__builtin_memcpy(r->tty, tty->name, sizeof(r->tty));
	else
		r->tty[0] = 0;
	const struct cred *cred = task->cred;
	r->euid = cred->euid.val;
	r->egid = cred->egid.val;

	__u64 size = offsetof(struct starling_exec_record, data) + argv_off + len;
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
	struct task_struct *task = current_task();
	if (!admit(task, STARLING_RECORD_FORK))
		return 0;
	struct starling_fork_record r = {};
	fill_header(&r.h, task, STARLING_RECORD_FORK);
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
	struct task_struct *task = current_task();
	if (task->signal->live.counter != 0)
		return 0;
	if (!admit(task, STARLING_RECORD_EXIT))
		return 0;
	struct starling_exit_record r = {};
	fill_header(&r.h, task, STARLING_RECORD_EXIT);
	r.status = task->exit_code;
	submit(&r, sizeof(r));
	return 0;
}

/* The record of cgroup/cgroup_mkdir (include/trace/events/cgroup.h): the
 * hierarchy's id, the new cgroup's level and id, its path (__data_loc). */
struct starling_cgroup_mkdir_ctx {
	__u64 common;
	int root;
	int level;
	__u64 id;
	__u32 path_loc; /* offset (low 16 bits) and length of the path */
};

/* A cgroup was created: its id and path are sent while it exists, so the
 * node can name the cgroup of a process that ran in one removed within a
 * second (a Kubernetes Job's pod), when a later lookup finds nothing.
 * Only the cgroup2 hierarchy (the one cgroup ids refer to), and never
 * filtered: the node needs every one, and they are rare. Written straight
 * into the ring (the record is larger than the stack). */
SEC("tracepoint/cgroup/cgroup_mkdir")
int starling_cgroup_mkdir(struct starling_cgroup_mkdir_ctx *ctx)
{
	struct task_struct *task = current_task();
	if (ctx->root != task->cgroups->dfl_cgrp->root->hierarchy_id)
		return 0;
	struct starling_cgroup_record *r =
		bpf_ringbuf_reserve(&events, sizeof(struct starling_cgroup_record), 0);
	if (!r) {
		count_drop(STARLING_DROP_RINGBUF_FULL, STARLING_RECORD_CGROUP_MKDIR);
		return 0;
	}
	fill_header(&r->h, task, STARLING_RECORD_CGROUP_MKDIR);
	r->id = ctx->id;
	r->level = ctx->level;
	r->path_len = bpf_probe_read_kernel_str(r->path, sizeof(r->path),
						(void *)ctx + (ctx->path_loc & 0xFFFF));
	/* The reader is woken by the next batch, or its 20 ms poll; the
	 * ring keeps this record ahead of any exec in the new cgroup. */
	bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	return 0;
}
