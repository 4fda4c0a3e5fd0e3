// The immutable tree and its operations.
#include "shelbyfs/filesystem.h"

#include <fcntl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <new>
#include <unordered_map>

namespace shelbyfs {

const Filesystem::Node& Filesystem::node(InodeNo ino) const {
    if (ino == 0 || ino > nodes_.size()) {
        std::fprintf(stderr, "shelbyfs: broken invariant: unknown inode %llu\n", static_cast<unsigned long long>(ino));
        std::abort();
    }
    return nodes_[ino - 1];
}

namespace {

// A node while the tree is being built: names point into the manifest, and
// parent is the index of another draft.
struct Draft {
    enum class Kind : std::uint8_t { Dir, Shard, Sample };
    std::string_view name;
    std::uint32_t parent = 0;
    std::uint32_t index = 0;  // into manifest.shards or manifest.samples
    Kind kind = Kind::Dir;
};

struct DirKeyHash {
    std::size_t operator()(const std::pair<std::uint32_t, std::string_view>& k) const {
        return std::hash<std::string_view>{}(k.second) ^ (std::size_t{k.first} * 0x9e3779b97f4a7c15ull);
    }
};

}  // namespace

Result<std::unique_ptr<Filesystem>> Filesystem::create(const Manifest& manifest, Fetcher& fetcher,
                                                       FsOptions options) {
    std::unique_ptr<Filesystem> fs(new Filesystem(fetcher, options));
    // Node indices are 32-bit: leave room for the fixed directories.
    if (manifest.samples.size() + manifest.shards.size() >= std::numeric_limits<std::uint32_t>::max() / 2)
        return make_error(Errc::InvalidArgument, "manifest: too many samples for one mount");

    std::vector<Draft> drafts;
    drafts.reserve(manifest.samples.size() + manifest.shards.size() + 16);
    drafts.push_back({});  // the root
    auto add = [&](std::string_view name, std::uint32_t parent, Draft::Kind kind, std::size_t index) {
        drafts.push_back({name, parent, static_cast<std::uint32_t>(index), kind});
        return static_cast<std::uint32_t>(drafts.size() - 1);
    };
    std::uint32_t samples = add("samples", 0, Draft::Kind::Dir, 0);
    std::uint32_t shards = add("shards", 0, Draft::Kind::Dir, 0);
    std::uint32_t checkpoints = add("checkpoints", 0, Draft::Kind::Dir, 0);
    for (std::size_t i = 0; i < manifest.shards.size(); ++i) {
        add(manifest.shards[i].name, shards, Draft::Kind::Shard, i);
        fs->total_bytes_ += manifest.shards[i].size;
    }

    // Directories by (parent, name) while building.
    std::unordered_map<std::pair<std::uint32_t, std::string_view>, std::uint32_t, DirKeyHash> dirs;
    for (std::size_t i = 0; i < manifest.samples.size(); ++i) {
        const SampleInfo& s = manifest.samples[i];
        std::uint32_t parent = samples;
        std::string_view path = s.path;
        std::size_t start = 0;
        for (std::size_t slash = path.find('/'); slash != std::string_view::npos; slash = path.find('/', start)) {
            std::string_view part = path.substr(start, slash - start);
            auto [it, inserted] = dirs.try_emplace({parent, part}, 0);
            if (inserted) it->second = add(part, parent, Draft::Kind::Dir, 0);
            parent = it->second;
            start = slash + 1;
        }
        if (dirs.count({parent, path.substr(start)}) != 0)
            return make_error(Errc::InvalidArgument, "manifest: sample \"" + s.path + "\" is also a directory");
        add(path.substr(start), parent, Draft::Kind::Sample, i);
    }
    dirs = {};

    // Children of each draft, grouped by parent (counting sort).
    std::vector<std::uint32_t> first(drafts.size() + 1, 0);
    for (std::size_t d = 1; d < drafts.size(); ++d) ++first[drafts[d].parent + 1];
    for (std::size_t d = 1; d < first.size(); ++d) first[d] += first[d - 1];
    std::vector<std::uint32_t> kids(drafts.size() - 1);
    {
        std::vector<std::uint32_t> fill(first.begin(), first.end() - 1);
        for (std::size_t d = 1; d < drafts.size(); ++d) kids[fill[drafts[d].parent]++] = static_cast<std::uint32_t>(d);
    }

    // Lay the nodes out breadth-first: a directory's children are appended
    // together, sorted by name, when the directory itself is reached.
    std::size_t name_bytes = 0;
    for (const Draft& d : drafts) name_bytes += d.name.size();
    fs->names_.reserve(name_bytes);
    fs->nodes_.reserve(drafts.size());
    std::vector<std::uint32_t> order;  // order[final index] = draft
    order.reserve(drafts.size());
    order.push_back(0);
    Node root;
    root.is_dir = true;
    fs->nodes_.push_back(root);
    for (std::size_t pos = 0; pos < order.size(); ++pos) {
        if (drafts[order[pos]].kind != Draft::Kind::Dir) continue;
        auto begin = kids.begin() + first[order[pos]];
        auto end = kids.begin() + first[order[pos] + 1];
        std::sort(begin, end, [&](std::uint32_t a, std::uint32_t b) { return drafts[a].name < drafts[b].name; });
        auto dup = std::adjacent_find(begin, end, [&](std::uint32_t a, std::uint32_t b) {
            return drafts[a].name == drafts[b].name;
        });
        if (dup != end)
            return make_error(Errc::InvalidArgument,
                              "manifest: duplicate name \"" + std::string(drafts[*dup].name) + "\" in one directory");
        fs->nodes_[pos].object = static_cast<std::uint32_t>(order.size());
        fs->nodes_[pos].children = static_cast<std::uint32_t>(end - begin);
        for (auto it = begin; it != end; ++it) {
            const Draft& d = drafts[*it];
            Node n;
            n.name_offset = fs->names_.size();
            n.name_length = static_cast<std::uint32_t>(d.name.size());
            fs->names_.append(d.name);
            n.parent = static_cast<std::uint32_t>(pos + 1);
            switch (d.kind) {
                case Draft::Kind::Dir:
                    n.is_dir = true;
                    ++fs->nodes_[pos].subdirs;
                    if (*it == checkpoints) fs->checkpoints_ino_ = order.size() + 1;
                    break;
                case Draft::Kind::Shard:
                    n.object = d.index;
                    n.size = manifest.shards[d.index].size;
                    break;
                case Draft::Kind::Sample: {
                    const SampleInfo& s = manifest.samples[d.index];
                    n.object = s.shard;
                    n.offset = s.offset;
                    n.size = s.size;
                    n.is_sample = true;
                    break;
                }
            }
            order.push_back(*it);
            fs->nodes_.push_back(n);
        }
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
    auto begin = nodes_.begin() + dir.object;
    auto it = std::lower_bound(begin, begin + dir.children, name,
                               [&](const Node& child, std::string_view n) { return name_of(child) < n; });
    if (it == begin + dir.children || name_of(*it) != name) return make_error(Errc::NotFound, "no such entry");
    return getattr(static_cast<InodeNo>(it - nodes_.begin()) + 1);
}

Result<Attr> Filesystem::getattr(InodeNo ino) {
    if (ckpt(ino)) return checkpoints_->getattr(ino);
    return attr_of(ino);
}

Result<Attr> Filesystem::setattr(InodeNo ino, const SetAttrRequest& request, FileHandle fh, CallerId caller) {
    if (ckpt(ino)) return checkpoints_->setattr(ino, request, fh, caller);
    (void)node(ino);
    return make_error(Errc::ReadOnly, "read-only file system");
}

Result<std::vector<DirEntry>> Filesystem::readdir(InodeNo ino) {
    if (ckpt(ino)) return checkpoints_->readdir(ino);
    const Node& dir = node(ino);
    if (!dir.is_dir) return make_error(Errc::NotDirectory, "readdir of a file");
    std::vector<DirEntry> out;
    out.reserve(std::size_t{dir.children} + 2);
    out.push_back({".", ino, S_IFDIR});
    out.push_back({"..", dir.parent == 0 ? ino : dir.parent, S_IFDIR});
    for (std::uint32_t i = dir.object; i < dir.object + dir.children; ++i) {
        const Node& c = nodes_[i];
        out.push_back({std::string(name_of(c)), InodeNo{i} + 1, static_cast<mode_t>(c.is_dir ? S_IFDIR : S_IFREG)});
    }
    return out;
}

Result<FileHandle> Filesystem::open(InodeNo ino, int flags, const Push& push, CallerId caller) {
    if (ckpt(ino)) return checkpoints_->open(ino, flags, caller);
    const Node& n = node(ino);
    if (n.is_dir) return make_error(Errc::IsDirectory, "open of a directory");
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) != 0)
        return make_error(Errc::ReadOnly, "read-only file");
    if (!pushable(n)) return FileHandle{0};
    OpenStripe& stripe = open_stripes_[ino % kOpenStripes];
    std::lock_guard lock(stripe.mutex);
    std::uint32_t& handles = stripe.open[ino];
    if (handles == 0 && push) {
        try {  // an optimisation: out of memory skips it, and the open goes on
            bool fresh = false;
            {
                std::lock_guard plock(pushed_mutex_);
                if (pushed_.empty()) pushed_.resize(nodes_.size());
                fresh = !pushed_[ino - 1];
            }
            std::optional<ReadSlices> slices;
            if (fresh) slices = fetcher_.cached_slices(n.object, n.offset, static_cast<std::size_t>(n.size));
            if (slices) {
                {
                    std::lock_guard plock(pushed_mutex_);
                    pushed_[ino - 1] = true;
                }
                push(*slices);
            }
        } catch (const std::bad_alloc&) {
        }
    }
    ++handles;
    return FileHandle{0};
}

Result<void> Filesystem::opendir(InodeNo ino) {
    if (ckpt(ino)) return checkpoints_->opendir(ino);
    if (!node(ino).is_dir) return make_error(Errc::NotDirectory, "opendir of a file");
    return {};
}

Result<std::size_t> Filesystem::read(InodeNo ino, FileHandle fh, std::uint64_t offset, std::size_t size,
                                     char* buffer) {
    auto slices = read_slices(ino, fh, offset, size);
    if (!slices) return std::move(slices).error();
    return copy_slices(*slices, buffer);
}

Result<ReadSlices> Filesystem::read_slices(InodeNo ino, FileHandle fh, std::uint64_t offset, std::size_t size) {
    if (ckpt(ino)) return checkpoints_->read_slices(fh, offset, size);
    const Node& n = node(ino);
    if (n.is_dir) return make_error(Errc::IsDirectory, "read of a directory");
    if (offset >= n.size) return ReadSlices{};
    std::size_t length = static_cast<std::size_t>(std::min<std::uint64_t>(size, n.size - offset));
    return fetcher_.read_slices(n.object, n.offset + offset, length);
}

Result<std::size_t> Filesystem::write(InodeNo ino, FileHandle fh, std::uint64_t offset, const char* data,
                                      std::size_t size, CallerId caller) {
    if (ckpt(ino)) return checkpoints_->write(fh, offset, data, size, caller);
    return make_error(Errc::ReadOnly, "read-only file");
}

Result<void> Filesystem::flush(InodeNo ino, FileHandle fh, CallerId caller) {
    if (ckpt(ino)) return checkpoints_->flush(fh, caller);
    return {};
}

Result<void> Filesystem::fsync(InodeNo ino, FileHandle fh) {
    if (ckpt(ino)) return checkpoints_->fsync(fh);
    return {};
}

void Filesystem::release(InodeNo ino, FileHandle fh) {
    if (ckpt(ino)) {
        checkpoints_->release(fh);
        return;
    }
    if (!immutable(ino) || !pushable(node(ino))) return;
    OpenStripe& stripe = open_stripes_[ino % kOpenStripes];
    std::lock_guard lock(stripe.mutex);
    auto it = stripe.open.find(ino);
    if (it != stripe.open.end() && --it->second == 0) stripe.open.erase(it);
}

Result<std::pair<Attr, FileHandle>> Filesystem::create(InodeNo parent, std::string_view name, mode_t mode,
                                                       int flags, CallerId caller) {
    if (ckpt(parent)) return checkpoints_->create(parent, name, mode, flags, caller);
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
