// fuse_lowlevel_ops over Filesystem: each callback calls the core, replies
// once on success, and sends one error reply from one place otherwise.
#define FUSE_USE_VERSION 314
#include "shelbyfs/fuse_adapter.h"

#include <fuse_lowlevel.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <memory>
#include <new>

#include "shelbyfs/log.h"

namespace shelbyfs {

namespace {

enum class Op { Lookup, Getattr, Setattr, Open, Read, Opendir, Readdir, Statfs, Modify, Getxattr, Listxattr };

const char* op_name(Op op) {
    switch (op) {
        case Op::Lookup: return "lookup";
        case Op::Getattr: return "getattr";
        case Op::Setattr: return "setattr";
        case Op::Open: return "open";
        case Op::Read: return "read";
        case Op::Opendir: return "opendir";
        case Op::Readdir: return "readdir";
        case Op::Statfs: return "statfs";
        case Op::Modify: return "modify";
        case Op::Getxattr: return "getxattr";
        case Op::Listxattr: return "listxattr";
    }
    return "?";
}

Filesystem& core(fuse_req_t req) { return *static_cast<Filesystem*>(fuse_req_userdata(req)); }

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
        bool expected = r.error().code == Errc::NotFound || r.error().code == Errc::ReadOnly ||
                        r.error().code == Errc::IsDirectory || r.error().code == Errc::NotDirectory;
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
    if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
    if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want &= ~FUSE_CAP_SPLICE_WRITE;
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    reply_with(req, Op::Lookup, [&] { return core(req).lookup(parent, name); },
               [&](const Attr& a) {
                   fuse_entry_param e = to_entry(a);
                   fuse_reply_entry(req, &e);
               });
}

void op_forget(fuse_req_t req, fuse_ino_t, uint64_t) {
    // Inode numbers are static for the life of the mount: nothing to free.
    fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t, fuse_forget_data*) { fuse_reply_none(req); }

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
    reply_with(req, Op::Getattr, [&] { return core(req).getattr(ino); },
               [&](const Attr& a) { fuse_reply_attr(req, &a.st, a.ttl); });
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat*, int, fuse_file_info*) {
    reply_with(req, Op::Setattr, [&] { return core(req).modify(ino); }, [] {});
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    reply_with(req, Op::Open, [&] { return core(req).open(ino, fi->flags); },
               [&] {
                   fi->keep_cache = 1;  // contents never change under a mount
                   fuse_reply_open(req, fi);
               });
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info*) {
    std::unique_ptr<char[]> buffer;
    reply_with(
        req, Op::Read,
        [&]() -> Result<std::size_t> {
            buffer.reset(new char[size == 0 ? 1 : size]);
            return core(req).read(ino, static_cast<std::uint64_t>(offset), size, buffer.get());
        },
        [&](std::size_t n) { fuse_reply_buf(req, buffer.get(), n); });
}

void op_release(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

// A directory handle holds its listing, so offsets stay stable across readdir calls.
void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    reply_with(req, Op::Opendir, [&] { return core(req).readdir(ino); },
               [&](std::vector<DirEntry>& entries) {
                   fi->fh = reinterpret_cast<std::uint64_t>(new std::vector<DirEntry>(std::move(entries)));
                   fi->cache_readdir = 1;
                   fi->keep_cache = 1;
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

void op_statfs(fuse_req_t req, fuse_ino_t) {
    struct statvfs s = core(req).statfs();
    fuse_reply_statfs(req, &s);
}

void reply_modify(fuse_req_t req, fuse_ino_t ino) {
    reply_with(req, Op::Modify, [&] { return core(req).modify(ino); }, [&] { fuse_reply_err(req, 0); });
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char*, mode_t, dev_t) { reply_modify(req, parent); }
void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char*, mode_t) { reply_modify(req, parent); }
void op_unlink(fuse_req_t req, fuse_ino_t parent, const char*) { reply_modify(req, parent); }
void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char*) { reply_modify(req, parent); }
void op_symlink(fuse_req_t req, const char*, fuse_ino_t parent, const char*) { reply_modify(req, parent); }
void op_rename(fuse_req_t req, fuse_ino_t parent, const char*, fuse_ino_t, const char*, unsigned int) {
    reply_modify(req, parent);
}
void op_link(fuse_req_t req, fuse_ino_t, fuse_ino_t parent, const char*) { reply_modify(req, parent); }
void op_create(fuse_req_t req, fuse_ino_t parent, const char*, mode_t, fuse_file_info*) { reply_modify(req, parent); }
void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char*, const char*, size_t, int) { reply_modify(req, ino); }
void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char*) { reply_modify(req, ino); }

void op_getxattr(fuse_req_t req, fuse_ino_t, const char*, size_t) { fuse_reply_err(req, ENODATA); }

void op_listxattr(fuse_req_t req, fuse_ino_t, size_t size) {
    if (size == 0) fuse_reply_xattr(req, 0);
    else fuse_reply_buf(req, nullptr, 0);
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
    ops.release = op_release;
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

}  // namespace

int run_fuse(Filesystem& fs, const FuseOptions& options, std::string* error) {
    std::vector<std::string> argv_strings{"shelbyfs"};
    for (const auto& a : options.fuse_args) argv_strings.push_back(a);
    if (options.debug) argv_strings.push_back("-d");
    std::vector<char*> argv;
    for (auto& s : argv_strings) argv.push_back(s.data());
    fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());

    static const fuse_lowlevel_ops ops = make_ops();
    fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &fs);
    if (se == nullptr) {
        *error = "cannot start the FUSE session (bad -o option? libfuse printed the reason above)";
        return 1;
    }
    if (fuse_set_signal_handlers(se) != 0) {
        fuse_session_destroy(se);
        *error = "cannot install signal handlers";
        return 1;
    }
    if (fuse_session_mount(se, options.mountpoint.c_str()) != 0) {
        fuse_remove_signal_handlers(se);
        fuse_session_destroy(se);
        *error = "cannot mount on " + options.mountpoint + " (libfuse printed the reason above)";
        return 1;
    }
    if (options.on_mounted) options.on_mounted();

    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(cfg, options.max_threads);
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    int rc = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);

    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    if (rc != 0 && rc != SIGINT && rc != SIGTERM && rc != SIGHUP) {
        *error = "FUSE session loop failed: " + std::string(std::strerror(rc < 0 ? -rc : rc));
        return 1;
    }
    return 0;
}

}  // namespace shelbyfs
