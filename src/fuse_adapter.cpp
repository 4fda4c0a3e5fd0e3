// fuse_lowlevel_ops over Filesystem: each callback calls the core, replies
// once on success, and sends one error reply from one place otherwise.
#define FUSE_USE_VERSION 314
#include "shelbyfs/fuse_adapter.h"

#include <fuse_lowlevel.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shelbyfs/log.h"

namespace shelbyfs {

namespace {

enum class Op {
    Lookup, Getattr, Setattr, Open, Read, Write, Flush, Fsync, Create, Mkdir, Unlink, Rmdir, Rename,
    Opendir, Readdir, Statfs, Modify, Setxattr, Getxattr, Listxattr, Removexattr
};

const char* op_name(Op op) {
    switch (op) {
        case Op::Lookup: return "lookup";
        case Op::Getattr: return "getattr";
        case Op::Setattr: return "setattr";
        case Op::Open: return "open";
        case Op::Read: return "read";
        case Op::Write: return "write";
        case Op::Flush: return "flush";
        case Op::Fsync: return "fsync";
        case Op::Create: return "create";
        case Op::Mkdir: return "mkdir";
        case Op::Unlink: return "unlink";
        case Op::Rmdir: return "rmdir";
        case Op::Rename: return "rename";
        case Op::Setxattr: return "setxattr";
        case Op::Removexattr: return "removexattr";
        case Op::Opendir: return "opendir";
        case Op::Readdir: return "readdir";
        case Op::Statfs: return "statfs";
        case Op::Modify: return "modify";
        case Op::Getxattr: return "getxattr";
        case Op::Listxattr: return "listxattr";
    }
    return "?";
}

// What every callback reaches through fuse_req_userdata().
struct Session {
    explicit Session(Filesystem& f) : fs(f) {}
    Filesystem& fs;
    fuse_session* se = nullptr;  // set before the first request
    std::atomic<std::uint64_t> pushed{0};
    std::atomic<std::uint64_t> pushed_bytes{0};
    std::atomic<bool> push_failed{false};
};

Session& session(fuse_req_t req) { return *static_cast<Session*>(fuse_req_userdata(req)); }
CallerId caller(fuse_req_t req) {
    const fuse_ctx* ctx = fuse_req_ctx(req);
    return ctx != nullptr && ctx->pid > 0 ? static_cast<CallerId>(ctx->pid) : 0;
}
Filesystem& core(fuse_req_t req) { return session(req).fs; }

// Run `body`; on success hand its value to `reply`, otherwise reply with the
// mapped errno. Expected misses (ENOENT on lookup, EROFS) are not logged as errors.
template <typename Body, typename Reply>
void reply_with(fuse_req_t req, Op op, Body&& body, Reply&& reply) noexcept {
    int err = 0;
    try {
        auto r = body();
        if (r) {
            if constexpr (std::is_same_v<decltype(r), Result<void>>) reply();
            else reply(r.value());
            return;
        }
        err = to_errno(r.error().code);
        Errc c = r.error().code;
        bool expected = c == Errc::NotFound || c == Errc::ReadOnly || c == Errc::IsDirectory ||
                        c == Errc::NotDirectory || c == Errc::Exists || c == Errc::NotEmpty || c == Errc::NoData ||
                        c == Errc::NotSupported || c == Errc::TooBig || c == Errc::Permission || c == Errc::NoSpace ||
                        c == Errc::InvalidArgument;
        if (expected) log::debug("fuse", std::string(op_name(op)) + " failed errno=" + std::to_string(err) + ": " +
                                             r.error().message);
        else log::error("fuse", std::string(op_name(op)) + " failed errno=" + std::to_string(err) + ": " +
                                    r.error().message);
    } catch (const std::bad_alloc&) {
        err = ENOMEM;
        log::error("fuse", std::string(op_name(op)) + ": out of memory");
    } catch (const std::exception& e) {
        err = EIO;
        log::error("fuse", std::string(op_name(op)) + ": exception: " + e.what() + " (A01)");
    } catch (...) {
        err = EIO;
        log::error("fuse", std::string(op_name(op)) + ": unknown exception (A02)");
    }
    fuse_reply_err(req, err);
}

fuse_entry_param to_entry(const Attr& a) {
    fuse_entry_param e{};
    e.ino = a.st.st_ino;
    e.attr = a.st;
    e.attr_timeout = a.ttl;
    e.entry_timeout = a.ttl;
    return e;
}

void op_init(void*, fuse_conn_info* conn) {
    // The tree is immutable: let the kernel read ahead and keep many
    // requests in flight (kernel defaults 12/9 throttle parallel reads).
    conn->max_background = 64;
    conn->congestion_threshold = 48;
    // Checkpoint writes: 1 MiB requests instead of 128 KiB.
    conn->max_write = 1u << 20;
    // Sequential reads (whole shards, large samples) in 1 MiB requests, one
    // per cache block, instead of 128 KiB ones.
    conn->max_readahead = 1u << 20;
    if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
    if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want &= ~FUSE_CAP_SPLICE_WRITE;
    // open(O_TRUNC) arrives as one call, so overwriting a checkpoint never
    // copies its old content into the spool first.
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    // Writes must reach us (and the spool) as they happen: close() reports
    // whether they were saved.
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

void reply_entry(fuse_req_t req, const Attr& a) {
    fuse_entry_param e = to_entry(a);
    fuse_reply_entry(req, &e);
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    reply_with(req, Op::Lookup, [&] { return core(req).lookup(parent, name); },
               [&](const Attr& a) { reply_entry(req, a); });
}

void op_forget(fuse_req_t req, fuse_ino_t, uint64_t) {
    // Inode numbers are never reused within a mount: nothing to free.
    fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t, fuse_forget_data*) { fuse_reply_none(req); }

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
    reply_with(req, Op::Getattr, [&] { return core(req).getattr(ino); },
               [&](const Attr& a) { fuse_reply_attr(req, &a.st, a.ttl); });
}

std::int64_t ns_of(const timespec& t) { return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec; }

std::int64_t now_ns() {
    timespec t{};
    clock_gettime(CLOCK_REALTIME, &t);
    return ns_of(t);
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
    SetAttrRequest r;
    if (to_set & FUSE_SET_ATTR_MODE) r.mode = attr->st_mode & 07777;
    if (to_set & FUSE_SET_ATTR_SIZE) r.size = static_cast<std::uint64_t>(attr->st_size);
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) r.mtime_ns = now_ns();
    else if (to_set & FUSE_SET_ATTR_MTIME) r.mtime_ns = ns_of(attr->st_mtim);
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) r.atime_ns = now_ns();
    else if (to_set & FUSE_SET_ATTR_ATIME) r.atime_ns = ns_of(attr->st_atim);
    r.owner_change = (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) != 0;
    FileHandle fh = fi != nullptr ? fi->fh : 0;
    reply_with(req, Op::Setattr, [&] { return core(req).setattr(ino, r, fh, caller(req)); },
               [&](const Attr& a) { fuse_reply_attr(req, &a.st, a.ttl); });
}

// A checkpoint opened write-only bypasses the kernel's page cache: the
// writer's pages go straight into the request (one copy less, and no second
// cache of bytes that are about to sit in the spool). O_RDWR keeps the page
// cache: the kernel refuses MAP_SHARED on a direct-I/O descriptor, and
// np.memmap, LMDB or SQLite map files they open read-write.
bool writes_direct(int flags) { return (flags & O_ACCMODE) == O_WRONLY; }

// Puts a sample's bytes in the kernel's page cache (FUSE_NOTIFY_STORE)
// before open() returns: reading it then costs no READ round trip, nor the
// GETATTR the kernel sends at the next stat() of a file it READ from (the
// read may have changed its atime). Filesystem::open calls it only when no
// READ of the file can be in flight (see there): the store waits for the
// file's page locks, and a READ holds them until one of our threads answers.
// A failure is harmless: the kernel READs the file as usual.
void push_into_page_cache(fuse_req_t req, fuse_ino_t ino, const ReadSlices& slices) noexcept {
    Session& s = session(req);
    int rc = 0;
    try {
        std::size_t size = slices_size(slices);
        std::string joined;
        fuse_bufvec bufv{};  // FUSE_BUFVEC_INIT(size), which is C
        bufv.count = 1;
        bufv.buf[0].size = size;
        bufv.buf[0].fd = -1;
        if (slices.size() == 1) {
            bufv.buf[0].mem = const_cast<char*>(slices[0].data);
        } else {
            joined.resize(size);
            copy_slices(slices, joined.data());
            bufv.buf[0].mem = joined.data();
        }
        rc = fuse_lowlevel_notify_store(s.se, ino, 0, &bufv, static_cast<fuse_buf_copy_flags>(0));
        if (rc == 0) {
            ++s.pushed;
            s.pushed_bytes += size;
            return;
        }
    } catch (...) {
        rc = -ENOMEM;
    }
    if (!s.push_failed.exchange(true)) {
        try {
            log::debug("fuse", std::string("pushing a sample into the page cache failed: ") + std::strerror(-rc) +
                                   " (further failures not logged)");
        } catch (...) {
        }
    }
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    auto push = [&](const ReadSlices& slices) { push_into_page_cache(req, ino, slices); };
    reply_with(req, Op::Open, [&] { return core(req).open(ino, fi->flags, push, caller(req)); },
               [&](FileHandle fh) {
                   fi->fh = fh;
                   // Files of the manifest never change under a mount; checkpoint
                   // files can, so their pages are dropped on every open.
                   fi->keep_cache = fh == 0 ? 1 : 0;
                   // close() of a read-only file has nothing to save: no FLUSH
                   // round trip per sample (kernel 5.18+; ignored before).
                   fi->noflush = (fi->flags & O_ACCMODE) == O_RDONLY && (fi->flags & O_TRUNC) == 0;
                   fi->direct_io = writes_direct(fi->flags);
                   if (fuse_reply_open(req, fi) != 0) core(req).release(ino, fh);
               });
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
    reply_with(req, Op::Create, [&] { return core(req).create(parent, name, mode, fi->flags, caller(req)); },
               [&](const std::pair<Attr, FileHandle>& created) {
                   fuse_entry_param e = to_entry(created.first);
                   fi->fh = created.second;
                   fi->keep_cache = 0;
                   fi->direct_io = writes_direct(fi->flags);
                   if (fuse_reply_create(req, &e, fi) != 0) core(req).release(e.ino, created.second);
               });
}

// Replied straight from the cached blocks (one iovec per block): the kernel
// copies each byte once, into the reader's pages.
void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* fi) {
    reply_with(
        req, Op::Read, [&] { return core(req).read_slices(ino, fi->fh, static_cast<std::uint64_t>(offset), size); },
        [&](const ReadSlices& slices) {
            // Tiny blocks (a manifest may say 1 byte) would need more iovecs
            // than writev takes (libfuse adds one for the header): copy then.
            if (slices.size() >= IOV_MAX) {
                std::string joined(slices_size(slices), '\0');
                copy_slices(slices, joined.data());
                fuse_reply_buf(req, joined.data(), joined.size());
                return;
            }
            std::vector<iovec> iov;
            iov.reserve(slices.size());
            for (const ReadSlice& s : slices) iov.push_back(iovec{const_cast<char*>(s.data), s.size});
            fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
        });
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t offset, fuse_file_info* fi) {
    // A write-back of a shared mapping's pages comes from whichever task
    // flushes them (often a kernel thread), not from the one that wrote.
    CallerId who = fi->writepage ? 0 : caller(req);
    reply_with(req, Op::Write,
               [&] { return core(req).write(ino, fi->fh, static_cast<std::uint64_t>(offset), buf, size, who); },
               [&](std::size_t n) { fuse_reply_write(req, n); });
}

// close(): for a checkpoint, the upload happens here and its result is what
// close() returns.
void op_flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    reply_with(req, Op::Flush, [&] { return core(req).flush(ino, fi->fh, caller(req)); },
               [&] { fuse_reply_err(req, 0); });
}

void op_fsync(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info* fi) {
    reply_with(req, Op::Fsync, [&] { return core(req).fsync(ino, fi->fh); }, [&] { fuse_reply_err(req, 0); });
}

void op_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    try {
        core(req).release(ino, fi->fh);
    } catch (const std::exception& e) {
        log::error("fuse", std::string("release: exception: ") + e.what() + " (A03)");
    }
    fuse_reply_err(req, 0);
}

// A directory handle holds its listing, so offsets stay stable across readdir calls.
void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    reply_with(req, Op::Opendir, [&] { return core(req).readdir(ino); },
               [&](std::vector<DirEntry>& entries) {
                   fi->fh = reinterpret_cast<std::uint64_t>(new std::vector<DirEntry>(std::move(entries)));
                   bool immutable = core(req).immutable(ino);
                   fi->cache_readdir = immutable ? 1 : 0;
                   fi->keep_cache = immutable ? 1 : 0;
                   if (fuse_reply_open(req, fi) != 0) delete reinterpret_cast<std::vector<DirEntry>*>(fi->fh);
               });
}

void op_readdir(fuse_req_t req, fuse_ino_t, size_t size, off_t offset, fuse_file_info* fi) {
    auto* entries = reinterpret_cast<std::vector<DirEntry>*>(fi->fh);
    reply_with(
        req, Op::Readdir,
        [&]() -> Result<std::string> {
            std::string buf(size, '\0');
            std::size_t used = 0;
            for (auto i = static_cast<std::size_t>(offset); i < entries->size(); ++i) {
                const DirEntry& e = (*entries)[i];
                struct stat st {};
                st.st_ino = e.ino;
                st.st_mode = e.type;
                std::size_t need = fuse_add_direntry(req, buf.data() + used, size - used, e.name.c_str(), &st,
                                                     static_cast<off_t>(i + 1));
                if (need > size - used) break;
                used += need;
            }
            buf.resize(used);
            return buf;
        },
        [&](const std::string& buf) { fuse_reply_buf(req, buf.data(), buf.size()); });
}

void op_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    delete reinterpret_cast<std::vector<DirEntry>*>(fi->fh);
    fuse_reply_err(req, 0);
}

void op_fsyncdir(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
    // Namespace changes are recorded in the store before they return.
    fuse_reply_err(req, 0);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
    struct statvfs s = core(req).statfs();
    fuse_reply_statfs(req, &s);
}

void reply_ok(fuse_req_t req) { fuse_reply_err(req, 0); }

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    reply_with(req, Op::Mkdir, [&] { return core(req).mkdir(parent, name, mode); },
               [&](const Attr& a) { reply_entry(req, a); });
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
    reply_with(req, Op::Unlink, [&] { return core(req).unlink(parent, name); }, [&] { reply_ok(req); });
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
    reply_with(req, Op::Rmdir, [&] { return core(req).rmdir(parent, name); }, [&] { reply_ok(req); });
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent, const char* new_name,
               unsigned int flags) {
    reply_with(req, Op::Rename, [&] { return core(req).rename(parent, name, new_parent, new_name, flags); },
               [&] { reply_ok(req); });
}

// mknod of a regular file: an empty checkpoint, saved at once.
void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t) {
    reply_with(
        req, Op::Create,
        [&]() -> Result<Attr> {
            if (!S_ISREG(mode)) {
                auto m = core(req).modify(parent);
                return std::move(m).error();
            }
            auto created = core(req).create(parent, name, mode, O_WRONLY | O_EXCL);
            if (!created) return std::move(created).error();
            auto flushed = core(req).flush(created->first.st.st_ino, created->second);
            core(req).release(created->first.st.st_ino, created->second);
            if (!flushed) return std::move(flushed).error();
            return core(req).getattr(created->first.st.st_ino);
        },
        [&](const Attr& a) { reply_entry(req, a); });
}

void reply_modify(fuse_req_t req, fuse_ino_t ino) {
    reply_with(req, Op::Modify, [&] { return core(req).modify(ino); }, [&] { reply_ok(req); });
}

void op_symlink(fuse_req_t req, const char*, fuse_ino_t parent, const char*) { reply_modify(req, parent); }
void op_link(fuse_req_t req, fuse_ino_t, fuse_ino_t parent, const char*) { reply_modify(req, parent); }

void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags) {
    reply_with(req, Op::Setxattr,
               [&] { return core(req).setxattr(ino, name, std::string_view(value, size), flags); },
               [&] { reply_ok(req); });
}

// getxattr/listxattr: size 0 asks for the length; a too-small buffer is ERANGE.
void reply_xattr_bytes(fuse_req_t req, size_t size, const std::string& bytes) {
    if (size == 0) fuse_reply_xattr(req, bytes.size());
    else if (bytes.size() > size) fuse_reply_err(req, ERANGE);
    else fuse_reply_buf(req, bytes.data(), bytes.size());
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
    reply_with(req, Op::Getxattr, [&] { return core(req).getxattr(ino, name); },
               [&](const std::string& value) { reply_xattr_bytes(req, size, value); });
}

void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    reply_with(req, Op::Listxattr, [&] { return core(req).listxattr(ino); },
               [&](const std::vector<std::string>& names) {
                   std::string list;
                   for (const std::string& n : names) {
                       list += n;
                       list.push_back('\0');
                   }
                   reply_xattr_bytes(req, size, list);
               });
}

void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
    reply_with(req, Op::Removexattr, [&] { return core(req).removexattr(ino, name); }, [&] { reply_ok(req); });
}

fuse_lowlevel_ops make_ops() {
    fuse_lowlevel_ops ops{};
    ops.init = op_init;
    ops.lookup = op_lookup;
    ops.forget = op_forget;
    ops.forget_multi = op_forget_multi;
    ops.getattr = op_getattr;
    ops.setattr = op_setattr;
    ops.mknod = op_mknod;
    ops.mkdir = op_mkdir;
    ops.unlink = op_unlink;
    ops.rmdir = op_rmdir;
    ops.symlink = op_symlink;
    ops.rename = op_rename;
    ops.link = op_link;
    ops.open = op_open;
    ops.read = op_read;
    ops.write = op_write;
    ops.flush = op_flush;
    ops.fsync = op_fsync;
    ops.release = op_release;
    ops.fsyncdir = op_fsyncdir;
    ops.opendir = op_opendir;
    ops.readdir = op_readdir;
    ops.releasedir = op_releasedir;
    ops.statfs = op_statfs;
    ops.setxattr = op_setxattr;
    ops.getxattr = op_getxattr;
    ops.listxattr = op_listxattr;
    ops.removexattr = op_removexattr;
    ops.create = op_create;
    return ops;
}

// Tells the kernel about names and inodes that changed without it asking.
// libfuse warns that notifications sent from inside a request handler can
// deadlock, so they are queued and sent from this thread.
class Notifier {
public:
    explicit Notifier(fuse_session* se) : se_(se), thread_([this] { run(); }) {}
    ~Notifier() {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        cv_.notify_one();
        thread_.join();
    }
    void push(InodeNo ino, InodeNo parent, const std::string& name) {
        {
            std::lock_guard lock(mutex_);
            queue_.push_back({ino, parent, name});
        }
        cv_.notify_one();
    }

private:
    struct Item {
        InodeNo ino;
        InodeNo parent;
        std::string name;
    };
    void run() {
        std::unique_lock lock(mutex_);
        for (;;) {
            cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
            if (queue_.empty()) return;
            Item item = std::move(queue_.front());
            queue_.pop_front();
            lock.unlock();
            // Errors (ENOENT: the kernel had nothing cached) need no action.
            if (item.parent != 0)
                fuse_lowlevel_notify_inval_entry(se_, item.parent, item.name.c_str(), item.name.size());
            fuse_lowlevel_notify_inval_inode(se_, item.ino, 0, 0);
            lock.lock();
        }
    }
    fuse_session* se_;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<Item> queue_;
    bool stop_ = false;
    std::thread thread_;
};

// "MAJ:MIN" of the FUSE filesystem mounted at `resolved` (a path with no
// symlinks), from /proc/self/mountinfo; the last mount there wins. Neither
// stat() nor realpath() of the mountpoint: once mounted, they would ask this
// very daemon, whose loop is not running yet.
std::string mount_device(const std::string& resolved) {
    std::ifstream in("/proc/self/mountinfo");
    std::string line, found;
    while (std::getline(in, line)) {
        // id parent MAJ:MIN root mountpoint options ... - fstype source ...
        std::istringstream fields(line);
        std::string id, parent, dev, root, point;
        if (!(fields >> id >> parent >> dev >> root >> point)) continue;
        std::string unescaped;  // mountinfo writes ' ', '\t', '\n' and '\\' as \ooo
        for (std::size_t i = 0; i < point.size(); ++i) {
            auto octal = [&](std::size_t k) { return k < point.size() && point[k] >= '0' && point[k] <= '7'; };
            if (point[i] == '\\' && octal(i + 1) && octal(i + 2) && octal(i + 3)) {
                unescaped += static_cast<char>((point[i + 1] - '0') * 64 + (point[i + 2] - '0') * 8 + (point[i + 3] - '0'));
                i += 3;
            } else {
                unescaped += point[i];
            }
        }
        auto dash = line.find(" - ");
        bool is_fuse = dash != std::string::npos && line.compare(dash + 3, 4, "fuse") == 0;
        if (unescaped == resolved && is_fuse) found = dev;
    }
    return found;
}

void set_read_ahead(const std::string& resolved, unsigned kb) {
    std::string dev = mount_device(resolved);
    if (dev.empty()) {
        log::info("fuse", "read-ahead left at the kernel's default: no FUSE mount at " + resolved +
                              " in /proc/self/mountinfo");
        return;
    }
    std::string path = "/sys/class/bdi/" + dev + "/read_ahead_kb";
    std::string value = std::to_string(kb) + "\n";
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? ::write(fd, value.data(), value.size()) : -1;
    bool ok = n == static_cast<ssize_t>(value.size());
    int err = n >= 0 && !ok ? EIO : errno;
    if (fd >= 0) ::close(fd);
    if (!ok) {
        log::info("fuse", "read-ahead left at the kernel's default (128 KiB): cannot write " + path + ": " +
                              std::strerror(err) + (err == EACCES ? " (needs root)" : ""));
        return;
    }
    log::debug("fuse", "read-ahead of " + resolved + " set to " + std::to_string(kb) + " KiB (" + path + ")");
}

}  // namespace

int run_fuse(Filesystem& fs, const FuseOptions& options, std::string* error) {
    std::vector<std::string> argv_strings{"shelbyfs"};
    for (const auto& a : options.fuse_args) argv_strings.push_back(a);
    if (options.debug) argv_strings.push_back("-d");
    std::vector<char*> argv;
    for (auto& s : argv_strings) argv.push_back(s.data());
    fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
    // fuse_session_new() may copy the arguments into memory of its own.
    struct ArgsGuard {
        fuse_args* args;
        ~ArgsGuard() { fuse_opt_free_args(args); }
    } args_guard{&args};

    static const fuse_lowlevel_ops ops = make_ops();
    Session state(fs);
    fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &state);
    if (se == nullptr) {
        *error = "cannot start the FUSE session (bad -o option? libfuse printed the reason above)";
        return 1;
    }
    state.se = se;
    if (fuse_set_signal_handlers(se) != 0) {
        fuse_session_destroy(se);
        *error = "cannot install signal handlers";
        return 1;
    }
    char resolved[PATH_MAX];  // before mounting: see mount_device()
    std::string mountpoint_resolved =
        ::realpath(options.mountpoint.c_str(), resolved) != nullptr ? resolved : options.mountpoint;
    if (fuse_session_mount(se, options.mountpoint.c_str()) != 0) {
        fuse_remove_signal_handlers(se);
        fuse_session_destroy(se);
        *error = "cannot mount on " + options.mountpoint + " (libfuse printed the reason above)";
        return 1;
    }
    auto notifier = std::make_unique<Notifier>(se);
    fs.set_invalidator([n = notifier.get()](InodeNo ino, InodeNo parent, const std::string& name) {
        n->push(ino, parent, name);
    });
    if (options.read_ahead_kb != 0) set_read_ahead(mountpoint_resolved, options.read_ahead_kb);
    if (options.on_mounted) options.on_mounted();

    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(cfg, options.max_threads);
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    int rc = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);

    fs.set_invalidator(nullptr);
    notifier.reset();
    if (state.pushed != 0)
        log::info("fuse", "pushed " + std::to_string(state.pushed.load()) + " samples (" +
                              std::to_string(state.pushed_bytes.load() >> 10) + " KiB) into the kernel's page cache");
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    // ECONNABORTED: the kernel tore the connection down, as it can when a
    // lazily unmounted filesystem loses its last user: an unmount, not a failure.
    if (rc == -ECONNABORTED || rc == ECONNABORTED) {
        log::info("fuse", "the kernel closed the connection (unmounted)");
        rc = 0;
    }
    if (rc != 0 && rc != SIGINT && rc != SIGTERM && rc != SIGHUP) {
        *error = "FUSE session loop failed: " + std::string(std::strerror(rc < 0 ? -rc : rc));
        return 1;
    }
    return 0;
}

}  // namespace shelbyfs
