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
/* Bytes of a file path captured (cwd, watched files); a power of two. */
#define STARLING_PATH_MAX 512
/* Bytes of a memfd's name captured (the kernel allows 249). */
#define STARLING_MEMFD_NAME_MAX 256
/* Bytes of a DNS query captured: the 12-byte header, the longest name
 * (255) and the question's type and class (4), rounded up. */
#define STARLING_DNS_CAPTURE 272
/* Bytes of a module name captured (the kernel's MODULE_NAME_LEN is 56). */
#define STARLING_MODULE_NAME_MAX 64

enum starling_record_kind {
	STARLING_RECORD_EXEC = 1,
	STARLING_RECORD_FORK = 2,
	STARLING_RECORD_EXIT = 3,
	STARLING_RECORD_TCP_CONNECT = 4,
	STARLING_RECORD_TCP_ACCEPT = 5,
	STARLING_RECORD_TCP_LISTEN = 6,
	STARLING_RECORD_FILE_OPEN = 7,
	STARLING_RECORD_FILE_RENAME = 8,
	STARLING_RECORD_FILE_UNLINK = 9,
	STARLING_RECORD_FILE_CHMOD = 10,
	STARLING_RECORD_DEV_WRITE = 11,
	STARLING_RECORD_PRIVILEGE = 12,
	STARLING_RECORD_PTRACE = 13,
	STARLING_RECORD_MEMFD = 14,
	STARLING_RECORD_BPF_LOAD = 15,
	STARLING_RECORD_SOCKET_BIND = 16,
	STARLING_RECORD_DNS_QUERY = 17,
	STARLING_RECORD_MODULE_LOAD = 18,
	/* Not an event: a cgroup's id and path for the node's resolver. */
	STARLING_RECORD_CGROUP_MKDIR = 19,
	/* The size of per-kind tables: a power of two above the largest kind. */
	STARLING_RECORD_KINDS = 32,
};

/* Why a record was not delivered. The per-CPU array "drops" has one
 * counter per (reason, kind): slot reason * STARLING_RECORD_KINDS + kind. */
enum starling_drop_reason {
	STARLING_DROP_RINGBUF_FULL = 0, /* lost: userspace fell behind */
	STARLING_DROP_RATE_LIMITED = 1, /* over the kind's configured rate */
	STARLING_DROP_FILTERED = 2,     /* the node's own activity or an allow-list */
	STARLING_DROP_REASONS = 3,
};

/* Runtime settings, written by the loader from the node's config into the
 * one-element array "settings". All zero means: report everything. */
struct starling_settings {
	__u32 own_tgid;        /* records caused by this process are filtered */
	__u32 kinds_off;       /* bit k set: records of kind k are not made */
	__u32 quiet_cgroups;   /* nonzero: consult the quiet_cgroups map */
	__u32 quiet_exes;      /* nonzero: consult the quiet_exes map */
	__u32 quiet_paths;     /* nonzero: consult the quiet_paths trie */
	/* Wake the reader only once this many bytes wait in the ring buffer
	 * (it also polls on a timer); 0: wake it for every record. */
	__u32 wakeup_bytes;
	/* Per-CPU token buckets, per kind, in nanoseconds of credit: a record
	 * costs cost_ns, credit accrues at 1 ns per ns up to burst_ns. 0 cost:
	 * unlimited. */
	__u64 cost_ns[STARLING_RECORD_KINDS];
	__u64 burst_ns[STARLING_RECORD_KINDS];
};

/* An executable that is allow-listed (quiet_exes): its inode. */
struct starling_exe_key {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
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

/* starling_exec_record.flags */
#define STARLING_EXEC_STDIN_SOCKET 1
#define STARLING_EXEC_STDOUT_SOCKET 2
#define STARLING_EXEC_ARGV_TRUNCATED 4
#define STARLING_EXEC_CWD_TRUNCATED 8
/* The image is an unlinked file (nlink 0) ... */
#define STARLING_EXEC_EXE_DELETED 16
/* ... created by memfd_create (its name starts with "memfd:"). */
#define STARLING_EXEC_EXE_MEMFD 32

struct starling_exec_record {
	struct starling_header h;
	__u32 filename_len; /* bytes of filename (no NUL), < STARLING_FILENAME_MAX */
	__u32 argv_len;     /* bytes of argv, <= STARLING_ARGV_MAX */
	__u32 cwd_len;      /* bytes of cwd (no NUL), < STARLING_PATH_MAX */
	__u32 flags;        /* STARLING_EXEC_* */
	__u32 euid;         /* effective ids after the exec (setuid files) */
	__u32 egid;
	char tty[STARLING_TTY_LEN]; /* controlling terminal ("pts0"), or empty */
	/* filename, cwd and argv, packed in that order: a record carries only
	 * the bytes they use (most execs need a few hundred, not 5 KiB). */
	char data[STARLING_FILENAME_MAX + STARLING_PATH_MAX + STARLING_ARGV_MAX];
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

/* Both ends of an inet socket: a TCP connect (completed or failed),
 * accept or listen, a bind, and the front of a DNS query record. */
struct starling_socket_record {
	struct starling_header h;
	__u16 family;       /* AF_INET or AF_INET6 */
	__u16 local_port;   /* host byte order */
	__u16 remote_port;  /* host byte order */
	__u16 protocol;     /* IPPROTO_TCP, IPPROTO_UDP, ... */
	__s32 result;       /* connect: 0 or -errno; DNS: bytes sent or -errno; else 0 */
	__u32 _pad;
	__u8 local_addr[16];  /* network order; IPv4 in the first 4 bytes */
	__u8 remote_addr[16];
};

/* starling_dns_record.flags: the payload was read (else the send went
 * through a call whose buffer the sensor does not know). */
#define STARLING_DNS_READ 1

/* A UDP datagram sent to port 53. The kernel copies the start of the
 * payload; the node decodes the question. */
struct starling_dns_record {
	struct starling_socket_record s;
	__u16 captured;     /* bytes of payload, <= STARLING_DNS_CAPTURE */
	__u16 flags;        /* STARLING_DNS_* */
	__u16 _pad[2];
	__u8 payload[STARLING_DNS_CAPTURE];
};

/* A kernel module was loaded. */
struct starling_module_record {
	struct starling_header h;
	__u32 taints;       /* the module's taint flags (TAINT_* bits) */
	__u32 _pad;
	char name[STARLING_MODULE_NAME_MAX];
};

/* Bytes of a cgroup path captured, with its NUL (a Kubernetes container's
 * cgroup path is about 200). */
#define STARLING_CGROUP_PATH_MAX 512

/* A cgroup was created in the cgroup2 hierarchy. The header is the task
 * that created it (the runtime); the node only remembers id and path. */
struct starling_cgroup_record {
	struct starling_header h;
	__u64 id;           /* cgroup2 id: what bpf_get_current_cgroup_id() returns */
	__s32 path_len;     /* bytes read with the NUL, or a negative errno */
	__u32 level;        /* depth below the hierarchy's root */
	char path[STARLING_CGROUP_PATH_MAX];
};

/* starling_file_record.flags */
#define STARLING_FILE_WRITE 1        /* opened for writing */
#define STARLING_FILE_CREATED 2      /* the open created the file */
#define STARLING_FILE_TRUNCATED 4    /* a path was cut to fit */
#define STARLING_FILE_PARENT_KNOWN 8 /* parent_mode is the parent directory's mode */
#define STARLING_FILE_UNMATCHED 16   /* a caller's path has ".", ".." or empty components:
				      * not matched in the kernel, the node matches its
				      * lexical form */

/* An open of a watched path, a write-open of a regular file on /dev, a
 * rename or unlink of a watched path, or a chmod that sets an execute bit. */
struct starling_file_record {
	struct starling_header h;
	__s32 result;        /* 0 or -errno (open: the fd) */
	__u32 flags;         /* STARLING_FILE_* */
	__u32 mode;          /* open: the inode's mode; chmod: the mode set */
	__u32 parent_mode;   /* chmod: the parent directory's mode, if known */
	__u16 path_len;
	__u16 path2_len;     /* rename: bytes in the new path */
	__u32 _pad;
	char path[STARLING_PATH_MAX];
	char path2[STARLING_PATH_MAX]; /* rename: the new path; else not sent */
};

/* Which call changed credentials (starling_cred_record.op). */
enum starling_cred_op {
	STARLING_CRED_SETUID = 1,
	STARLING_CRED_SETREUID = 2,
	STARLING_CRED_SETRESUID = 3,
	STARLING_CRED_SETGID = 4,
	STARLING_CRED_SETREGID = 5,
	STARLING_CRED_SETRESGID = 6,
	STARLING_CRED_CAPSET = 7,
	STARLING_CRED_EXEC = 8, /* exec of a set-user/group-id file */
};

/* A process gained root ids or capabilities. */
struct starling_cred_record {
	struct starling_header h;
	__u32 op;            /* enum starling_cred_op */
	__s32 result;
	__u32 old_uid, old_euid, old_gid, old_egid;
	__u32 new_uid, new_euid, new_gid, new_egid;
	__u64 old_caps;      /* effective capabilities before */
	__u64 new_caps;      /* and after */
};

/* ptrace() with a request that takes over or changes another process. */
struct starling_ptrace_record {
	struct starling_header h;
	__s64 request;
	__u32 target;        /* the pid argument */
	__s32 result;
};

/* memfd_create(): an anonymous file that a payload can be exec'd from. */
struct starling_memfd_record {
	struct starling_header h;
	__u32 flags;
	__s32 result;        /* the fd or -errno */
	char name[STARLING_MEMFD_NAME_MAX];
};

/* bpf(BPF_PROG_LOAD). */
struct starling_bpf_record {
	struct starling_header h;
	__u32 prog_type;
	__u32 insn_cnt;
	__s32 result;        /* the program fd or -errno */
	__u32 _pad;
	char prog_name[16];
};

#endif
