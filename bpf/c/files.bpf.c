/* Files: opens of watched paths, write-opens of regular files on /dev,
 * renames and unlinks of watched paths, chmod +x (included by
 * sensor.bpf.c). Paths are built in the kernel (path.h) and matched
 * against the watched prefixes there, so unwatched opens cost no ring
 * buffer space and no userspace work. */

#define STARLING_FMODE_WRITE 0x2
#define STARLING_FMODE_CREATED 0x100000
#define STARLING_S_IFREG 0100000
#define STARLING_S_IXALL 0111

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct starling_file_record);
} file_scratch SEC(".maps");

/* Bytes of a file record sent: path2 only for renames. */
#define STARLING_FILE_SHORT offsetof(struct starling_file_record, path2)

static __always_inline struct starling_file_record *new_file_record(__u32 kind, __s32 result)
{
	__u32 zero = 0;
	struct starling_file_record *r = bpf_map_lookup_elem(&file_scratch, &zero);
	if (!r)
		return NULL;
	fill_header(&r->h, current_task(), kind);
	r->result = result;
	r->flags = 0;
	r->mode = 0;
	r->parent_mode = 0;
	r->path_len = 0;
	r->path2_len = 0;
	return r;
}

/* Whether the walked file lies on the filesystem mounted at /dev. */
static __always_inline int on_dev_mount(struct path_scratch *s, struct walked w)
{
	if (w.mount_start - w.start != 4)
		return 0;
	__u32 i = w.start & (STARLING_PATH_MAX - 1);
	return s->buf[i] == '/' && s->buf[(i + 1) & (2 * STARLING_PATH_MAX - 1)] == 'd' &&
	       s->buf[(i + 2) & (2 * STARLING_PATH_MAX - 1)] == 'e' &&
	       s->buf[(i + 3) & (2 * STARLING_PATH_MAX - 1)] == 'v';
}

/* An open returned fd: the opened file is in the fd table, already
 * resolved (relative paths, "..", symlinks), so its real path is walked
 * from its dentry. */
static __always_inline int on_open(long fd)
{
	if (fd < 0)
		return 0;
	struct task_struct *task = current_task();
	if (!admit_uncounted(task, STARLING_RECORD_FILE_OPEN))
		return 0;
	struct file *file = fd_file(task, fd);
	struct path_scratch *s = get_path_scratch();
	if (!file || !s)
		return 0;
	struct walked w = walk_file(s, task, file);
	__u32 len = STARLING_PATH_MAX - w.start;
	__u32 fmode = BPF_CORE_READ(file, f_mode);
	__u32 imode = BPF_CORE_READ(file, f_inode, i_mode);
	__u32 kind;
	if ((fmode & STARLING_FMODE_WRITE) && (imode & STARLING_S_IFMT) == STARLING_S_IFREG &&
	    on_dev_mount(s, w))
		kind = STARLING_RECORD_DEV_WRITE;
	else if (path_is_watched(s, w.start, len, STARLING_RECORD_FILE_OPEN))
		kind = STARLING_RECORD_FILE_OPEN;
	else
		return 0;
	struct starling_settings *st = get_settings();
	if (st && (st->kinds_off & (1u << kind)))
		return 0;

	struct starling_file_record *r = new_file_record(kind, fd);
	if (!r)
		return 0;
	r->mode = imode;
	if (fmode & STARLING_FMODE_WRITE)
		r->flags |= STARLING_FILE_WRITE;
	if (fmode & STARLING_FMODE_CREATED)
		r->flags |= STARLING_FILE_CREATED;
	if (w.truncated)
		r->flags |= STARLING_FILE_TRUNCATED;
	r->path_len = copy_path(r->path, s, w.start, len);
	submit(r, STARLING_FILE_SHORT);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int starling_open_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_open(ctx->ret);
}

/* Where a (dirfd, user path) pair lies in the scratch buffer. */
struct resolved {
	__u32 start;
	__u32 len;
	__u32 truncated;
	__u32 ok;
};

/* Builds the path a *at() call named: the user's absolute path, or the
 * directory (dirfd, or the cwd) joined with the relative one. A leading
 * "./" (common in scripts) is dropped; other "." and ".." components and
 * empty ones are kept as the caller wrote them (path_is_plain). */
static __always_inline struct resolved resolve_at(struct path_scratch *s, long dirfd, __u64 upath)
{
	struct resolved r = {};
	char first = 0;
	if (bpf_probe_read_user(&first, 1, (void *)upath) < 0)
		return r;
	if (first == '/') {
		long n = bpf_probe_read_user_str(s->buf + STARLING_PATH_MAX, STARLING_PATH_MAX, (void *)upath);
		if (n <= 1)
			return r;
		r.start = STARLING_PATH_MAX;
		r.len = n - 1;
		r.ok = 1;
		return r;
	}
	char second = 0;
	if (first == '.' && bpf_probe_read_user(&second, 1, (void *)(upath + 1)) == 0 && second == '/')
		upath += 2;
	struct task_struct *task = current_task();
	struct walked w;
	if (dirfd == STARLING_AT_FDCWD) {
		w = walk_cwd(s, task);
	} else {
		struct file *dir = fd_file(task, dirfd);
		if (!dir)
			return r;
		w = walk_file(s, task, dir);
	}
	__u32 n = append_name(s, (const char *)upath);
	r.start = w.start;
	r.len = STARLING_PATH_MAX - w.start + n;
	r.truncated = w.truncated;
	r.ok = 1;
	return r;
}

/* unlink/unlinkat of a watched path, reported with its result. */
static __always_inline int report_unlink(long dirfd, __u64 upath, long ret)
{
	struct path_scratch *s = get_path_scratch();
	if (!s)
		return 0;
	struct resolved p = resolve_at(s, dirfd, upath);
	if (!p.ok)
		return 0;
	int plain = path_is_plain(p.start, p.len);
	if (plain && !path_or_dir_is_watched(s, p.start, p.len, STARLING_RECORD_FILE_UNLINK))
		return 0;
	struct starling_file_record *r = new_file_record(STARLING_RECORD_FILE_UNLINK, ret);
	if (!r)
		return 0;
	if (p.truncated)
		r->flags |= STARLING_FILE_TRUNCATED;
	if (!plain)
		r->flags |= STARLING_FILE_UNMATCHED;
	r->path_len = copy_path(r->path, s, p.start, p.len);
	submit(r, STARLING_FILE_SHORT);
	return 0;
}

/* rename* from or to a watched path (moving a file into /etc/cron.d is
 * as interesting as moving /etc/shadow away), with both paths. When
 * either path is not plain, the node decides (STARLING_FILE_UNMATCHED). */
static __always_inline int report_rename(long olddir, __u64 oldpath, long newdir, __u64 newpath, long ret)
{
	struct path_scratch *s = get_path_scratch();
	if (!s)
		return 0;
	struct starling_file_record *r = new_file_record(STARLING_RECORD_FILE_RENAME, ret);
	if (!r)
		return 0;
	struct resolved p = resolve_at(s, olddir, oldpath);
	if (!p.ok)
		return 0;
	int plain = path_is_plain(p.start, p.len);
	int watched = plain && path_or_dir_is_watched(s, p.start, p.len, STARLING_RECORD_FILE_RENAME);
	r->path_len = copy_path(r->path, s, p.start, p.len);
	__u32 truncated = p.truncated;
	p = resolve_at(s, newdir, newpath);
	if (!p.ok)
		return 0;
	int plain2 = path_is_plain(p.start, p.len);
	watched |= plain2 && path_or_dir_is_watched(s, p.start, p.len, STARLING_RECORD_FILE_RENAME);
	if (!watched && plain && plain2)
		return 0;
	r->path2_len = copy_path(r->path2, s, p.start, p.len);
	if (truncated || p.truncated)
		r->flags |= STARLING_FILE_TRUNCATED;
	if (!plain || !plain2)
		r->flags |= STARLING_FILE_UNMATCHED;
	submit(r, sizeof(*r));
	return 0;
}

/* A successful chmod that sets an execute bit. fchmod knows the file and
 * so its parent directory, and the kernel drops it unless that directory
 * is world-writable; for a path the parent is left to userspace, which
 * stats it (docs/sensor.md). */
static __always_inline int report_chmod(long dirfd, __u64 upath, __u32 mode, long ret)
{
	if (ret != 0 || !(mode & STARLING_S_IXALL))
		return 0;
	struct path_scratch *s = get_path_scratch();
	if (!s)
		return 0;
	struct resolved p = resolve_at(s, dirfd, upath);
	if (!p.ok)
		return 0;
	struct starling_file_record *r = new_file_record(STARLING_RECORD_FILE_CHMOD, 0);
	if (!r)
		return 0;
	r->mode = mode;
	if (p.truncated)
		r->flags |= STARLING_FILE_TRUNCATED;
	r->path_len = copy_path(r->path, s, p.start, p.len);
	submit(r, STARLING_FILE_SHORT);
	return 0;
}

static __always_inline int report_fchmod(long fd, __u32 mode, long ret)
{
	if (ret != 0 || !(mode & STARLING_S_IXALL))
		return 0;
	struct task_struct *task = current_task();
	struct file *file = fd_file(task, fd);
	struct path_scratch *s = get_path_scratch();
	if (!file || !s)
		return 0;
	__u32 parent_mode = BPF_CORE_READ(file, f_path.dentry, d_parent, d_inode, i_mode);
	if (!(parent_mode & 0002))
		return 0;
	struct walked w = walk_file(s, task, file);
	struct starling_file_record *r = new_file_record(STARLING_RECORD_FILE_CHMOD, 0);
	if (!r)
		return 0;
	r->mode = mode;
	r->parent_mode = parent_mode;
	r->flags |= STARLING_FILE_PARENT_KNOWN;
	if (w.truncated)
		r->flags |= STARLING_FILE_TRUNCATED;
	r->path_len = copy_path(r->path, s, w.start, STARLING_PATH_MAX - w.start);
	submit(r, STARLING_FILE_SHORT);
	return 0;
}

STARLING_ON_ENTER(unlink, 1, STARLING_CALL_UNLINK, STARLING_RECORD_FILE_UNLINK)
STARLING_ON_ENTER(unlinkat, 3, STARLING_CALL_UNLINKAT, STARLING_RECORD_FILE_UNLINK)
STARLING_ON_ENTER(rename, 2, STARLING_CALL_RENAME, STARLING_RECORD_FILE_RENAME)
STARLING_ON_ENTER(renameat, 4, STARLING_CALL_RENAMEAT, STARLING_RECORD_FILE_RENAME)
STARLING_ON_ENTER(renameat2, 5, STARLING_CALL_RENAMEAT, STARLING_RECORD_FILE_RENAME)
STARLING_ON_ENTER(chmod, 2, STARLING_CALL_CHMOD, STARLING_RECORD_FILE_CHMOD)
STARLING_ON_ENTER(fchmod, 2, STARLING_CALL_FCHMOD, STARLING_RECORD_FILE_CHMOD)
STARLING_ON_ENTER(fchmodat, 3, STARLING_CALL_FCHMODAT, STARLING_RECORD_FILE_CHMOD)
STARLING_ON_ENTER(fchmodat2, 4, STARLING_CALL_FCHMODAT, STARLING_RECORD_FILE_CHMOD)

/* The return of every file call kept at entry. */
SEC("tracepoint/syscalls/sys_exit_unlinkat")
int starling_file_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pending_call c;
	if (!take_call(ctx, &c))
		return 0;
	long ret = ctx->ret;
	switch (c.call) {
	case STARLING_CALL_UNLINK:
		return report_unlink(STARLING_AT_FDCWD, c.args[0], ret);
	case STARLING_CALL_UNLINKAT:
		return report_unlink((int)c.args[0], c.args[1], ret);
	case STARLING_CALL_RENAME:
		return report_rename(STARLING_AT_FDCWD, c.args[0], STARLING_AT_FDCWD, c.args[1], ret);
	case STARLING_CALL_RENAMEAT:
		return report_rename((int)c.args[0], c.args[1], (int)c.args[2], c.args[3], ret);
	case STARLING_CALL_CHMOD:
		return report_chmod(STARLING_AT_FDCWD, c.args[0], c.args[1], ret);
	case STARLING_CALL_FCHMOD:
		return report_fchmod((int)c.args[0], c.args[1], ret);
	case STARLING_CALL_FCHMODAT:
		return report_chmod((int)c.args[0], c.args[1], c.args[2], ret);
	}
	return 0;
}
