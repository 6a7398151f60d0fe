/* Maps and helpers every program of the sensor shares. */
#ifndef STARLING_COMMON_H
#define STARLING_COMMON_H

#include "events.h"

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

static __always_inline void count_loss(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&losses, &slot);
	if (n)
		*n += 1;
}

/* Fills the header from the current task. */
static __always_inline void fill_header(struct starling_header *h, __u32 kind)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	h->kind = kind;
	h->tgid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	h->ktime_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

/* Sends a fixed-size record, counting it as lost when the ring is full. */
static __always_inline void submit(void *record, __u64 size)
{
	if (bpf_ringbuf_output(&events, record, size, 0) < 0)
		count_loss(STARLING_LOSS_RINGBUF_FULL);
}

#endif
