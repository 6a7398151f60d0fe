/* Records shared between the kernel programs and their Rust decoder
 * (bpf/src/raw.rs mirrors these layouts; keep them in sync). */
#ifndef STARLING_EVENTS_H
#define STARLING_EVENTS_H

#define STARLING_COMM_LEN 16
/* Bytes of the exec filename captured. */
#define STARLING_FILENAME_MAX 512
/* Bytes of argv captured (NUL-separated strings); a power of two. */
#define STARLING_ARGV_MAX 4096

enum starling_record_kind {
	STARLING_RECORD_EXEC = 1,
};

/* Loss counters, one slot per reason, in the per-CPU array "losses". */
enum starling_loss_slot {
	STARLING_LOSS_RINGBUF_FULL = 0,
	STARLING_LOSS_SLOTS = 4,
};

struct starling_exec_record {
	__u32 kind;         /* STARLING_RECORD_EXEC */
	__u32 tgid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u64 ktime_ns;     /* bpf_ktime_get_boot_ns() */
	__u64 cgroup_id;
	char comm[STARLING_COMM_LEN];
	__u32 filename_len; /* bytes in filename, without the NUL */
	__u32 argv_len;     /* bytes in argv */
	__u32 argv_truncated;
	__u32 _pad;
	char filename[STARLING_FILENAME_MAX];
	char argv[STARLING_ARGV_MAX];
};

#endif
