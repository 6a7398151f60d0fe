/* Records shared between the kernel programs and their Rust decoder
 * (bpf/src/raw.rs mirrors these layouts; keep them in sync). Every record
 * starts with struct starling_header. */
#ifndef STARLING_EVENTS_H
#define STARLING_EVENTS_H

#define STARLING_COMM_LEN 16
/* Bytes of the exec filename captured. */
#define STARLING_FILENAME_MAX 512
/* Bytes of the controlling terminal's name captured (tty_struct.name). */
#define STARLING_TTY_LEN 32
/* Bytes of argv captured (NUL-separated strings); a power of two. */
#define STARLING_ARGV_MAX 4096

enum starling_record_kind {
	STARLING_RECORD_EXEC = 1,
	STARLING_RECORD_FORK = 2,
	STARLING_RECORD_EXIT = 3,
	STARLING_RECORD_TCP_CONNECT = 4,
	STARLING_RECORD_TCP_ACCEPT = 5,
	STARLING_RECORD_TCP_LISTEN = 6,
};

/* Loss counters, one slot per reason, in the per-CPU array "losses". */
enum starling_loss_slot {
	STARLING_LOSS_RINGBUF_FULL = 0,
	STARLING_LOSS_SLOTS = 4,
};

/* The task that caused the record (56 bytes). */
struct starling_header {
	__u32 kind;         /* enum starling_record_kind */
	__u32 tgid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u64 ktime_ns;     /* bpf_ktime_get_boot_ns() */
	__u64 cgroup_id;
	char comm[STARLING_COMM_LEN];
};

struct starling_exec_record {
	struct starling_header h;
	__u32 filename_len; /* bytes in filename, without the NUL */
	__u32 argv_len;     /* bytes in argv */
	__u32 argv_truncated;
	__u32 stdio;        /* bit 0: stdin is a socket, bit 1: stdout is */
	char tty[STARLING_TTY_LEN]; /* controlling terminal ("pts0"), or empty */
	char filename[STARLING_FILENAME_MAX];
	char argv[STARLING_ARGV_MAX];
};

/* A new process; the header is the parent's. */
struct starling_fork_record {
	struct starling_header h;
	__u32 child_tgid;
	__u32 _pad;
};

/* The last thread of a process exited. */
struct starling_exit_record {
	struct starling_header h;
	__u32 status;       /* wait status: code << 8, or signal | 0x80 (core) */
	__u32 _pad;
};

/* A TCP connect (completed or failed), accept or listen. */
struct starling_tcp_record {
	struct starling_header h;
	__u16 family;       /* AF_INET or AF_INET6 */
	__u16 local_port;   /* host byte order */
	__u16 remote_port;  /* host byte order */
	__u16 _pad;
	__s32 result;       /* connect: 0 or -errno; else 0 */
	__u32 _pad2;
	__u8 local_addr[16];  /* network order; IPv4 in the first 4 bytes */
	__u8 remote_addr[16];
};

#endif
