// SPDX-License-Identifier: GPL-2.0
/* Process exec probe: one record per successful execve, taken at the
 * sched_process_exec tracepoint, where the new image's argv is in place. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "events.h"

char LICENSE[] SEC("license") = "GPL";

/* Size is set by the loader from the node's config (ring_buffer_bytes). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STARLING_LOSS_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} losses SEC(".maps");

/* Scratch space: the record is too large for the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct starling_exec_record);
} exec_scratch SEC(".maps");

static __always_inline void count_loss(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&losses, &slot);
	if (n)
		*n += 1;
}

SEC("tracepoint/sched/sched_process_exec")
int starling_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 zero = 0;
	struct starling_exec_record *r = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!r)
		return 0;

	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	r->kind = STARLING_RECORD_EXEC;
	r->tgid = pid_tgid >> 32;
	r->tid = (__u32)pid_tgid;
	r->ppid = BPF_CORE_READ(task, real_parent, tgid);
	r->uid = (__u32)uid_gid;
	r->gid = uid_gid >> 32;
	r->ktime_ns = bpf_ktime_get_boot_ns();
	r->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&r->comm, sizeof(r->comm));

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

	/* Send only the used part of argv. */
	__u64 size = offsetof(struct starling_exec_record, argv) + len;
	if (size > sizeof(*r))
		size = sizeof(*r);
	if (bpf_ringbuf_output(&events, r, size, 0) < 0)
		count_loss(STARLING_LOSS_RINGBUF_FULL);
	return 0;
}
