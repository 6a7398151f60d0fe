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
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	struct file *file = NULL;
	if (!fds || bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) < 0 || !file)
		return 0;
	umode_t mode = BPF_CORE_READ(file, f_inode, i_mode);
	return (mode & STARLING_S_IFMT) == STARLING_S_IFSOCK;
}

/* One record per successful execve, at sched_process_exec, where the new
 * image's argv is in place. */
SEC("tracepoint/sched/sched_process_exec")
int starling_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 zero = 0;
	struct starling_exec_record *r = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!r)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	fill_header(&r->h, STARLING_RECORD_EXEC);

	unsigned int off = ctx->__data_loc_filename & 0xFFFF;
	long n = bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), (void *)ctx + off);
	r->filename_len = n > 0 ? n - 1 : 0;

	unsigned long arg_start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(task, mm, arg_end);
	unsigned long len = arg_end > arg_start ? arg_end - arg_start : 0;
	r->argv_truncated = 0;
	if (len > STARLING_ARGV_MAX) {
		len = STARLING_ARGV_MAX;
		r->argv_truncated = 1;
	}
	/* Mask for the verifier: len is now provably within the buffer. */
	len &= (STARLING_ARGV_MAX - 1) | STARLING_ARGV_MAX;
	if (len > STARLING_ARGV_MAX)
		len = STARLING_ARGV_MAX;
	if (len > 0 && bpf_probe_read_user(r->argv, len, (void *)arg_start) < 0)
		len = 0;
	r->argv_len = len;

	r->stdio = fd_is_socket(task, 0) | (fd_is_socket(task, 1) << 1);
	r->tty[0] = 0;
	struct tty_struct *tty = BPF_CORE_READ(task, signal, tty);
	if (tty)
		bpf_core_read_str(r->tty, sizeof(r->tty), &tty->name);

	/* Send only the used part of argv. */
	__u64 size = offsetof(struct starling_exec_record, argv) + len;
	if (size > sizeof(*r))
		size = sizeof(*r);
	submit(r, size);
	return 0;
}

/* A new process (not a thread), at task_newtask, which runs in the parent
 * inside copy_process and carries the clone flags. */
SEC("tracepoint/task/task_newtask")
int starling_fork(struct trace_event_raw_task_newtask *ctx)
{
	if (ctx->clone_flags & STARLING_CLONE_THREAD)
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
	struct starling_exit_record r = {};
	fill_header(&r.h, STARLING_RECORD_EXIT);
	r.status = BPF_CORE_READ(task, exit_code);
	submit(&r, sizeof(r));
	return 0;
}
