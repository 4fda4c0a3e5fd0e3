// The immutable tree and its operations.
#include "shelbyfs/filesystem.h"

#include <fcntl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>

namespace shelbyfs {

const Filesystem::Node& Filesystem::node(InodeNo ino) const {
    if (ino == 0 || ino > nodes_.size()) {
        std::fprintf(stderr, "shelbyfs: broken invariant: unknown inode %llu\n", static_cast<unsigned long long>(ino));
        std::abort();
    }
    return nodes_[ino - 1];
}

InodeNo Filesystem::add_node(Node n) {
    nodes_.push_back(std::move(n));
    InodeNo ino = nodes_.size();
    InodeNo parent = nodes_.back().parent;
    if (parent != 0) {
        nodes_[parent - 1].children.push_back(ino);
        if (nodes_.back().is_dir) ++nodes_[parent - 1].subdirs;
    }
    return ino;
}

Result<std::unique_ptr<Filesystem>> Filesystem::create(const Manifest& manifest, Fetcher& fetcher,
                                                       FsOptions options) {
    std::unique_ptr<Filesystem> fs(new Filesystem(fetcher, options));
    fs->nodes_.reserve(manifest.samples.size() + manifest.shards.size() + 16);
    Node root;
    root.is_dir = true;
    fs->add_node(std::move(root));
    auto make_dir = [&](InodeNo parent, std::string name) {
        Node n;
        n.name = std::move(name);
        n.parent = parent;
        n.is_dir = true;
        return fs->add_node(std::move(n));
    };
    InodeNo samples = make_dir(kRootIno, "samples");
    InodeNo shards = make_dir(kRootIno, "shards");
    fs->checkpoints_ino_ = make_dir(kRootIno, "checkpoints");

    for (std::size_t i = 0; i < manifest.shards.size(); ++i) {
        Node n;
        n.name = manifest.shards[i].name;
        n.parent = shards;
        n.object = static_cast<std::uint32_t>(i);
        n.size = manifest.shards[i].size;
        fs->add_node(std::move(n));
        fs->total_bytes_ += manifest.shards[i].size;
    }

    // Directories by (parent, name) while building; children get sorted after.
    std::map<std::pair<InodeNo, std::string_view>, InodeNo> dirs;
    for (const SampleInfo& s : manifest.samples) {
        InodeNo parent = samples;
        std::string_view path = s.path;
        std::size_t start = 0;
        for (std::size_t slash = path.find('/'); slash != std::string_view::npos; slash = path.find('/', start)) {
            std::string_view part = path.substr(start, slash - start);
            auto [it, inserted] = dirs.try_emplace({parent, part}, 0);
            if (inserted) it->second = make_dir(parent, std::string(part));
            parent = it->second;
            start = slash + 1;
        }
        if (dirs.count({parent, path.substr(start)}) != 0)
            return make_error(Errc::InvalidArgument, "manifest: sample \"" + s.path + "\" is also a directory");
        Node n;
        n.name = std::string(path.substr(start));
        n.parent = parent;
        n.object = s.shard;
        n.offset = s.offset;
        n.size = s.size;
        fs->add_node(std::move(n));
    }
    for (Node& n : fs->nodes_) {
        if (!n.is_dir) continue;
        std::sort(n.children.begin(), n.children.end(),
                  [&](InodeNo a, InodeNo b) { return fs->nodes_[a - 1].name < fs->nodes_[b - 1].name; });
        auto dup = std::adjacent_find(n.children.begin(), n.children.end(), [&](InodeNo a, InodeNo b) {
            return fs->nodes_[a - 1].name == fs->nodes_[b - 1].name;
        });
        if (dup != n.children.end())
            return make_error(Errc::InvalidArgument,
                              "manifest: duplicate name \"" + fs->nodes_[*dup - 1].name + "\" in one directory");
    }
    return fs;
}

Attr Filesystem::attr_of(InodeNo ino) const {
    const Node& n = node(ino);
    Attr a;
    a.ttl = options_.ttl_seconds;
    a.st.st_ino = ino;
    a.st.st_uid = options_.uid;
    a.st.st_gid = options_.gid;
    a.st.st_mtim.tv_sec = options_.mtime;
    a.st.st_ctim.tv_sec = options_.mtime;
    a.st.st_atim.tv_sec = options_.mtime;
    a.st.st_blksize = 128 * 1024;
    if (n.is_dir) {
        a.st.st_mode = S_IFDIR | (ino == checkpoints_ino_ ? 0755 : 0555);
        a.st.st_nlink = 2 + n.subdirs;
        a.st.st_size = 4096;
    } else {
        a.st.st_mode = S_IFREG | 0444;
        a.st.st_nlink = 1;
        a.st.st_size = static_cast<off_t>(n.size);
        a.st.st_blocks = static_cast<blkcnt_t>((n.size + 511) / 512);
    }
    return a;
}

Result<Attr> Filesystem::lookup(InodeNo parent, std::string_view name) {
    if (ckpt(parent)) return checkpoints_->lookup(parent, name);
    const Node& dir = node(parent);
    if (!dir.is_dir) return make_error(Errc::NotDirectory, "lookup in a file");
    auto it = std::lower_bound(dir.children.begin(), dir.children.end(), name,
                               [&](InodeNo child, std::string_view n) { return nodes_[child - 1].name < n; });
    if (it == dir.children.end() || nodes_[*it - 1].name != name) return make_error(Errc::NotFound, "no such entry");
    return getattr(*it);
}

Result<Attr> Filesystem::getattr(InodeNo ino) {
    if (ckpt(ino)) return checkpoints_->getattr(ino);
    return attr_of(ino);
}

Result<Attr> Filesystem::setattr(InodeNo ino, const SetAttrRequest& request, FileHandle fh) {
    if (ckpt(ino)) return checkpoints_->setattr(ino, request, fh);
    (void)node(ino);
    return make_error(Errc::ReadOnly, "read-only file system");
}

Result<std::vector<DirEntry>> Filesystem::readdir(InodeNo ino) {
    if (ckpt(ino)) return checkpoints_->readdir(ino);
    const Node& dir = node(ino);
    if (!dir.is_dir) return make_error(Errc::NotDirectory, "readdir of a file");
    std::vector<DirEntry> out;
    out.reserve(dir.children.size() + 2);
    out.push_back({".", ino, S_IFDIR});
    out.push_back({"..", dir.parent == 0 ? ino : dir.parent, S_IFDIR});
    for (InodeNo child : dir.children) {
        const Node& c = nodes_[child - 1];
        out.push_back({c.name, child, static_cast<mode_t>(c.is_dir ? S_IFDIR : S_IFREG)});
    }
    return out;
}

Result<FileHandle> Filesystem::open(InodeNo ino, int flags) {
    if (ckpt(ino)) return checkpoints_->open(ino, flags);
    if (node(ino).is_dir) return make_error(Errc::IsDirectory, "open of a directory");
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) != 0)
        return make_error(Errc::ReadOnly, "read-only file");
    return FileHandle{0};
}

Result<void> Filesystem::opendir(InodeNo ino) {
    if (ckpt(ino)) return checkpoints_->opendir(ino);
    if (!node(ino).is_dir) return make_error(Errc::NotDirectory, "opendir of a file");
    return {};
}

Result<std::size_t> Filesystem::read(InodeNo ino, FileHandle fh, std::uint64_t offset, std::size_t size,
                                     char* buffer) {
    if (ckpt(ino)) return checkpoints_->read(fh, offset, size, buffer);
    const Node& n = node(ino);
    if (n.is_dir) return make_error(Errc::IsDirectory, "read of a directory");
    if (offset >= n.size) return std::size_t{0};
    std::size_t length = static_cast<std::size_t>(std::min<std::uint64_t>(size, n.size - offset));
    return fetcher_.read(n.object, n.offset + offset, buffer, length);
}

Result<std::size_t> Filesystem::write(InodeNo ino, FileHandle fh, std::uint64_t offset, const char* data,
                                      std::size_t size) {
    if (ckpt(ino)) return checkpoints_->write(fh, offset, data, size);
    return make_error(Errc::ReadOnly, "read-only file");
}

Result<void> Filesystem::flush(InodeNo ino, FileHandle fh) {
    if (ckpt(ino)) return checkpoints_->flush(fh);
    return {};
}

Result<void> Filesystem::fsync(InodeNo ino, FileHandle fh) {
    if (ckpt(ino)) return checkpoints_->fsync(fh);
    return {};
}

void Filesystem::release(InodeNo ino, FileHandle fh) {
    if (ckpt(ino)) checkpoints_->release(fh);
}

Result<std::pair<Attr, FileHandle>> Filesystem::create(InodeNo parent, std::string_view name, mode_t mode,
                                                       int flags) {
    if (ckpt(parent)) return checkpoints_->create(parent, name, mode, flags);
    return make_error(Errc::ReadOnly, "read-only file system");
}

Result<Attr> Filesystem::mkdir(InodeNo parent, std::string_view name, mode_t mode) {
    if (ckpt(parent)) return checkpoints_->mkdir(parent, name, mode);
    return make_error(Errc::ReadOnly, "read-only file system");
}

Result<void> Filesystem::unlink(InodeNo parent, std::string_view name) {
    if (ckpt(parent)) return checkpoints_->unlink(parent, name);
    return make_error(Errc::ReadOnly, "read-only file system");
}

Result<void> Filesystem::rmdir(InodeNo parent, std::string_view name) {
    if (ckpt(parent)) return checkpoints_->rmdir(parent, name);
    return make_error(Errc::ReadOnly, "read-only file system");
}

Result<void> Filesystem::rename(InodeNo parent, std::string_view name, InodeNo new_parent,
                                std::string_view new_name, unsigned flags) {
    if (ckpt(parent) && ckpt(new_parent)) return checkpoints_->rename(parent, name, new_parent, new_name, flags);
    if (ckpt(parent) || ckpt(new_parent))
        return make_error(Errc::ReadOnly, "renames in and out of checkpoints/ are not supported (read-only side)");
    return make_error(Errc::ReadOnly, "read-only file system");
}

Result<void> Filesystem::setxattr(InodeNo ino, std::string_view name, std::string_view value, int flags) {
    if (ckpt(ino)) return checkpoints_->setxattr(ino, name, value, flags);
    return make_error(Errc::ReadOnly, "read-only file system");
}

Result<std::string> Filesystem::getxattr(InodeNo ino, std::string_view name) {
    if (ckpt(ino)) return checkpoints_->getxattr(ino, name);
    (void)node(ino);
    return make_error(Errc::NoData, "no such xattr");
}

Result<std::vector<std::string>> Filesystem::listxattr(InodeNo ino) {
    if (ckpt(ino)) return checkpoints_->listxattr(ino);
    (void)node(ino);
    return std::vector<std::string>{};
}

Result<void> Filesystem::removexattr(InodeNo ino, std::string_view name) {
    if (ckpt(ino)) return checkpoints_->removexattr(ino, name);
    return make_error(Errc::ReadOnly, "read-only file system");
}

Result<void> Filesystem::modify(InodeNo parent_or_ino) const {
    if (ckpt(parent_or_ino))
        return make_error(Errc::Permission, "symlinks, hard links and special files are not supported in checkpoints/");
    (void)node(parent_or_ino);
    return make_error(Errc::ReadOnly, "read-only file system");
}

struct statvfs Filesystem::statfs() const {
    struct statvfs s {};
    s.f_bsize = 4096;
    s.f_frsize = 4096;
    s.f_blocks = (total_bytes_ + 4095) / 4096;
    s.f_files = nodes_.size();
    s.f_namemax = 255;
    if (checkpoints_ != nullptr) {
        // Free space is what the spool can still take: writers see it in df.
        auto st = checkpoints_->stats();
        std::uint64_t free = st.spool_limit > st.spool_used ? st.spool_limit - st.spool_used : 0;
        s.f_bfree = s.f_bavail = free / 4096;
        s.f_blocks += (st.spool_limit + 4095) / 4096;
    }
    return s;
}

}  // namespace shelbyfs
