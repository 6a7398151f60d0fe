/* Building a file's path in the kernel from its dentry and mount, and
 * matching it against the watched prefixes (an LPM trie). There is no
 * bpf_d_path for tracepoints, so the path is walked by hand, leaf to root,
 * crossing mount points, and bounded in depth. */
#ifndef STARLING_PATH_H
#define STARLING_PATH_H

#include "events.h"

/* Components walked; deeper paths are reported with their top cut off
 * and the truncated flag set. */
#define STARLING_PATH_DEPTH 24
#define STARLING_NAME_MAX 255
/* Bytes of a path used for matching (the LPM trie's key limit). */
#define STARLING_MATCH_MAX 256

/* Scratch for building paths. A directory's path is written backwards so
 * that it ends at buf[STARLING_PATH_MAX]; a name taken from a syscall
 * argument can then be appended after it. Twice the size that is used, so
 * that every masked offset plus length the verifier checks is inside. */
struct path_scratch {
	char buf[4 * STARLING_PATH_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_scratch);
} path_scratch SEC(".maps");

/* A path (or a prefix of one) as the LPM trie sees it: prefixlen in bits. */
struct watch_key {
	__u32 prefixlen;
	char data[STARLING_MATCH_MAX];
};

/* A watch_key with room for any length the verifier lets through. */
struct watch_key_buf {
	__u32 prefixlen;
	char data[2 * STARLING_MATCH_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct watch_key_buf);
} watch_key_scratch SEC(".maps");

/* Watched path prefixes, filled by the loader from the node's config. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct watch_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} watched_paths SEC(".maps");

/* Prefixes under which watched paths are not reported (configured noise). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct watch_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} quiet_paths SEC(".maps");

/* Where a walked path lies in the scratch buffer. */
struct walked {
	__u32 start;        /* the path is buf[start .. STARLING_PATH_MAX) */
	__u32 truncated;
	__u32 mount_start;  /* the file's mount point is buf[start .. mount_start) */
};

static __always_inline struct path_scratch *get_path_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&path_scratch, &zero);
}

/* The walk's state between steps of bpf_loop. */
struct walk_state {
	__u64 dentry;       /* struct dentry * */
	__u64 mnt;          /* struct mount * */
	__u64 mnt_root;     /* struct dentry *: the root of mnt */
	__u64 stop_dentry;  /* the task's root (struct path fs->root): */
	__u64 stop_mnt;     /* the walk ends there, as at a namespace root */
	__u32 pos;
	__u32 mount_start;
	__u32 crossed;
	__u32 truncated;
};

/* A dentry's parent and name. */
struct dentry_link {
	struct dentry *parent;
	struct qstr name;
};

/* Reads d_parent and d_name, in one helper call where they are adjacent
 * (every kernel so far; the offsets are relocated at load, so the other
 * branch is dead code the verifier drops). */
static __always_inline void read_link(struct dentry_link *l, struct dentry *d)
{
	__u32 parent_off = bpf_core_field_offset(struct dentry, d_parent);
	if (bpf_core_field_offset(struct dentry, d_name) == parent_off + sizeof(void *)) {
		if (bpf_probe_read_kernel(l, sizeof(*l), (void *)d + parent_off) < 0)
			l->parent = d; /* stop the walk as at a root */
	} else {
		l->parent = BPF_CORE_READ(d, d_parent);
		l->name = BPF_CORE_READ(d, d_name);
	}
}

/* Writes "/" + name in front of what the walk wrote so far (which starts
 * at *pos). Returns 0 when the name does not fit: the caller stops there. */
static __always_inline int prepend_name(struct path_scratch *s, __u32 *pos, __u32 len,
					const unsigned char *name)
{
	__u32 p = *pos;
	if (len > STARLING_NAME_MAX || len + 1 > p)
		return 0;
	STARLING_BOUND(len, 255);
	p -= len;
	bpf_probe_read_kernel(s->buf + (p & (STARLING_PATH_MAX - 1)), len, name);
	p -= 1;
	s->buf[p & (STARLING_PATH_MAX - 1)] = '/';
	*pos = p;
	return 1;
}

/* One step of the walk: a path component, or a crossing to the parent
 * mount. Returns 1 to stop (at the root, or out of room). Two helper
 * calls per component: the link and the name. */
static long walk_step(__u64 index, void *ctx)
{
	struct walk_state *st = ctx;
	if (st->dentry == st->stop_dentry && st->mnt == st->stop_mnt) {
		if (!st->crossed)
			st->mount_start = st->pos;
		return 1;
	}
	struct path_scratch *s = get_path_scratch();
	if (!s)
		return 1;
	struct dentry *dentry = (struct dentry *)st->dentry;
	struct dentry_link link = {};
	read_link(&link, dentry);
	if (st->dentry == st->mnt_root || dentry == link.parent) {
		struct mount *mnt = (struct mount *)st->mnt;
		struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (!st->crossed)
			st->mount_start = st->pos;
		if (st->dentry != st->mnt_root || mnt == mnt_parent)
			return 1;
		st->crossed = 1;
		st->dentry = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		st->mnt = (__u64)mnt_parent;
		st->mnt_root = (__u64)BPF_CORE_READ(mnt_parent, mnt.mnt_root);
		return 0;
	}
	__u32 pos = st->pos;
	if (!prepend_name(s, &pos, link.name.len, link.name.name)) {
		st->truncated = 1;
		return 1;
	}
	st->pos = pos;
	st->dentry = (__u64)link.parent;
	return 0;
}

/* Writes the path of (dentry, vfsmnt) backwards into the path scratch,
 * ending just before buf[STARLING_PATH_MAX]. The root gives an empty path
 * (start == STARLING_PATH_MAX): callers add the "/" they need. Paths are
 * relative to the task's root, as the process sees them (getcwd's view):
 * its mount namespace's root, or its chroot; a path outside that root
 * goes on to the namespace's root.
 * bpf_loop keeps the verifier's work to one step, whatever the depth.
 * `pos` is where the part already written starts (STARLING_PATH_MAX when
 * nothing is). */
static __always_inline struct walked walk_path_from(struct path_scratch *s, struct task_struct *task,
						    struct dentry *dentry, struct vfsmount *vfsmnt,
						    struct dentry *mnt_root, __u32 pos)
{
	struct fs_struct *fs = task->fs;
	struct walk_state st = {
		.dentry = (__u64)dentry,
		.mnt = (__u64)container_of(vfsmnt, struct mount, mnt),
		.mnt_root = (__u64)mnt_root,
		.stop_dentry = (__u64)fs->root.dentry,
		.stop_mnt = (__u64)container_of(fs->root.mnt, struct mount, mnt),
		.pos = pos,
	};
	long steps = bpf_loop(STARLING_PATH_DEPTH, walk_step, &st, 0);
	struct walked w = {
		.start = st.pos,
		.mount_start = st.crossed ? st.mount_start : st.pos,
		.truncated = st.truncated || steps >= STARLING_PATH_DEPTH,
	};
	if (w.start > STARLING_PATH_MAX)
		w.start = STARLING_PATH_MAX;
	return w;
}
/* The path of an open file of the task. */
static __always_inline struct walked walk_file(struct path_scratch *s, struct task_struct *task,
					       struct file *file)
{
	struct vfsmount *mnt = BPF_CORE_READ(file, f_path.mnt);
	return walk_path_from(s, task, BPF_CORE_READ(file, f_path.dentry), mnt,
			      BPF_CORE_READ(mnt, mnt_root), STARLING_PATH_MAX);
}

/* Components of the working directory walked inline before walk_path_from. */
#define STARLING_CWD_FAST_DEPTH 4

/* The task's working directory. Every exec walks it, so its first
 * components are walked here with typed loads (one helper call each, for
 * the name); a deeper path, or a mount below the namespace root, is
 * finished by walk_path_from where this stopped. */
static __always_inline struct walked walk_cwd(struct path_scratch *s, struct task_struct *task)
{
	struct fs_struct *fs = task->fs;
	struct vfsmount *vfsmnt = fs->pwd.mnt;
	struct dentry *root = vfsmnt->mnt_root;
	struct dentry *d = fs->pwd.dentry;
	/* The task's root, where the walk ends (in a chroot, maybe inside
	 * this mount). */
	struct dentry *top = vfsmnt == fs->root.mnt ? fs->root.dentry : NULL;
	__u32 pos = STARLING_PATH_MAX;
#pragma unroll
	for (int i = 0; i < STARLING_CWD_FAST_DEPTH; i++) {
		struct dentry *parent = d->d_parent;
		if (d == root || d == parent || d == top)
			break;
		if (!prepend_name(s, &pos, d->d_name.len, d->d_name.name))
			break; /* walk_path_from marks it truncated */
		d = parent;
	}
	if (d == top) {
		/* The task's root: done, with no mount to read. */
		struct walked w = {.start = pos, .mount_start = pos};
		return w;
	}
	if (d == root) {
		/* The root of the namespace's top mount: done, no loop. */
		struct mount *mnt = container_of(vfsmnt, struct mount, mnt);
		if (BPF_CORE_READ(mnt, mnt_parent) == mnt) {
			struct walked w = {.start = pos, .mount_start = pos};
			return w;
		}
	}
	return walk_path_from(s, task, d, vfsmnt, root, pos);
}

/* Appends the user string `name` after the walked directory ending at
 * STARLING_PATH_MAX, with a "/" between; returns the bytes appended. */
static __always_inline __u32 append_name(struct path_scratch *s, const char *name)
{
	s->buf[STARLING_PATH_MAX] = '/';
	long n = bpf_probe_read_user_str(s->buf + STARLING_PATH_MAX + 1, STARLING_PATH_MAX - 1, name);
	return n > 1 ? n : 1; /* n counts the NUL: "/" + name */
}

/* How a path stands against the watch list. */
enum watch_match {
	STARLING_NOT_WATCHED = 0,
	STARLING_WATCHED,
	STARLING_QUIET, /* under a watched prefix and under a quiet one */
};

/* Matches buf[start .. start+len) against the watched and quiet prefixes. */
static __always_inline enum watch_match match_path(struct path_scratch *s, __u32 start, __u32 len)
{
	__u32 zero = 0;
	struct watch_key_buf *k = bpf_map_lookup_elem(&watch_key_scratch, &zero);
	if (!k)
		return STARLING_NOT_WATCHED;
	if (len > STARLING_MATCH_MAX)
		len = STARLING_MATCH_MAX;
	STARLING_BOUND(len, 511);
	if (len > STARLING_MATCH_MAX)
		return STARLING_NOT_WATCHED;
	STARLING_BOUND(start, 1023);
	if (bpf_probe_read_kernel(k->data, len, s->buf + start) < 0)
		return STARLING_NOT_WATCHED;
	k->prefixlen = len * 8;
	if (!bpf_map_lookup_elem(&watched_paths, k))
		return STARLING_NOT_WATCHED;
	struct starling_settings *st = get_settings();
	if (st && st->quiet_paths && bpf_map_lookup_elem(&quiet_paths, k))
		return STARLING_QUIET;
	return STARLING_WATCHED;
}

/* Whether a match reports: a quiet path is counted as filtered for `kind`. */
static __always_inline int reports(enum watch_match m, __u32 kind)
{
	if (m == STARLING_QUIET)
		count_drop(STARLING_DROP_FILTERED, kind);
	return m == STARLING_WATCHED;
}

/* Whether buf[start .. start+len) lies under a watched prefix and not
 * under a quiet one (counted as filtered for `kind`). */
static __always_inline int path_is_watched(struct path_scratch *s, __u32 start, __u32 len, __u32 kind)
{
	return reports(match_path(s, start, len), kind);
}

/* path_is_watched, and for a path that is not: the same with a "/"
 * after it. A rename or removal of a directory names it without the
 * slash, and moving a whole directory to or from "/root/.ssh" must match
 * a watched "/root/.ssh/". */
static __always_inline int path_or_dir_is_watched(struct path_scratch *s, __u32 start, __u32 len,
						  __u32 kind)
{
	enum watch_match m = match_path(s, start, len);
	if (m == STARLING_NOT_WATCHED && start + len < sizeof(s->buf)) {
		s->buf[(start + len) & (sizeof(s->buf) - 1)] = '/';
		m = match_path(s, start, len + 1);
	}
	return reports(m, kind);
}

/* path_is_plain's state between steps of bpf_loop: the last four bytes
 * seen slide through `window`. */
struct plain_scan {
	__u32 end;
	__u32 window;
	__u32 plain;
};

static long plain_step(__u64 i, void *ctx)
{
	struct plain_scan *p = ctx;
	__u32 at = STARLING_PATH_MAX + (__u32)i;
	struct path_scratch *s = get_path_scratch();
	if (at >= p->end || !s)
		return 1;
	__u32 w = (p->window << 8) | (__u8)s->buf[at & (sizeof(s->buf) - 1)];
	p->window = w;
	if ((w & 0xffff) == 0x2f2f || (w & 0xffffff) == 0x2f2e2f || w == 0x2f2e2e2f) {
		p->plain = 0; /* "//", "/./", "/../" */
		return 1;
	}
	return 0;
}

/* Whether the caller's part of a resolved path (from STARLING_PATH_MAX,
 * where resolve_at puts it; the walked directory before it comes from
 * dentries and is plain) has no empty, "." or ".." component. Only a
 * plain path can be matched as text: "/etc//shadow" and
 * "/tmp/../etc/shadow" name /etc/shadow without starting with it. */
static __always_inline int path_is_plain(__u32 start, __u32 len)
{
	struct plain_scan p = {.end = start + len, .plain = 1};
	bpf_loop(STARLING_PATH_MAX, plain_step, &p, 0);
	if (!p.plain)
		return 0;
	/* A path ending in "/." or "/.." ends in such a component too. */
	__u32 w = (p.window << 8) | '/';
	return (w & 0xffffff) != 0x2f2e2f && w != 0x2f2e2e2f;
}

/* Copies buf[start .. start+len) into dst (STARLING_PATH_MAX bytes) and
 * returns the bytes copied (the end of a longer path is cut off). */
static __always_inline __u32 copy_path(char *dst, struct path_scratch *s, __u32 start, __u32 len)
{
	if (start > STARLING_PATH_MAX)
		return 0;
	if (len > STARLING_PATH_MAX - 1)
		len = STARLING_PATH_MAX - 1;
	STARLING_BOUND(start, 1023);
	STARLING_BOUND(len, 511);
	if (bpf_probe_read_kernel(dst, len, s->buf + start) < 0)
		return 0;
	return len;
}

/* The open file behind descriptor fd of the current task, or NULL. */
static __always_inline struct file *fd_file(struct task_struct *task, long fd)
{
	if (fd < 0)
		return NULL;
	struct fdtable *fdt = task->files->fdt;
	if (!fdt || fd >= fdt->max_fds)
		return NULL;
	/* The array of pointers is not a BTF pointer: read it by helper. */
	struct file **fds = fdt->fd;
	struct file *file = NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) < 0)
		return NULL;
	return file;
}

#endif
