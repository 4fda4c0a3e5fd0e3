// Filesystem: the FUSE-free core. Inode-numbered operations returning Result.
//
// The tree is built once from the manifest and never changes:
//   /samples/<path>       each sample's bytes (a range of its shard)
//   /shards/<name>        each shard's bytes
//   /checkpoints/         the writable checkpoint tree (see checkpoint.h), if
//                         attached; otherwise an empty read-only directory
// Every file of the static tree is a byte range of one object, so one read
// path serves both samples and shards. Operations on checkpoint inodes are
// passed to Checkpoints; everything else is read-only (EROFS).
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "shelbyfs/checkpoint.h"
#include "shelbyfs/fetcher.h"
#include "shelbyfs/fs_types.h"
#include "shelbyfs/manifest.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

struct FsOptions {
    double ttl_seconds = 3600.0;  ///< entry/attr timeout: the tree is immutable
    uid_t uid = 0;
    gid_t gid = 0;
    std::int64_t mtime = 0;  ///< shown on every node (the manifest's mtime)
};

/// Thread-safe: the static tree is immutable after create(), reads go to the
/// thread-safe Fetcher, and Checkpoints is thread-safe. Unknown inode numbers are a broken invariant (the
/// kernel only uses numbers we gave it) and abort.
class Filesystem {
public:
    /// Build the tree. Fails (InvalidArgument) only on conflicts validate()
    /// cannot see; the manifest must already be validated.
    static Result<std::unique_ptr<Filesystem>> create(const Manifest& manifest, Fetcher& fetcher, FsOptions options);

    /// Serve <mnt>/checkpoints from `checkpoints` (call before mounting).
    void attach_checkpoints(Checkpoints* checkpoints) { checkpoints_ = checkpoints; }
    InodeNo checkpoints_ino() const { return checkpoints_ino_; }
    /// A node of the static tree other than checkpoints/ itself: it never
    /// changes while mounted, so the kernel may keep all it learns of it.
    bool immutable(InodeNo ino) const { return ino != 0 && ino <= nodes_.size() && ino != checkpoints_ino_; }
    /// Forward Checkpoints' kernel-cache invalidations (no-op without checkpoints).
    void set_invalidator(Checkpoints::Invalidator f) {
        if (checkpoints_ != nullptr) checkpoints_->set_invalidator(std::move(f));
    }

    Result<Attr> lookup(InodeNo parent, std::string_view name);
    Result<Attr> getattr(InodeNo ino);
    /// chmod, utime, truncate: checkpoints only (EROFS elsewhere).
    Result<Attr> setattr(InodeNo ino, const SetAttrRequest& request, FileHandle fh, CallerId caller = 0);
    /// Entries of a directory, "." and ".." first.
    Result<std::vector<DirEntry>> readdir(InodeNo ino);
    /// Hands a sample's bytes to the FUSE adapter, which stores them in the
    /// kernel's page cache; must not throw.
    using Push = std::function<void(const ReadSlices&)>;
    /// Open a file: EISDIR for directories, EROFS for write access outside checkpoints.
    /// With `push`: a sample of at most kPushMax bytes that has no other open
    /// handle, whose blocks are all in the memory cache and that was not
    /// pushed before is handed to `push` first (fetching nothing). No other
    /// open() of it returns meanwhile, so no READ of it is in flight: the
    /// kernel's store, which waits for the file's page locks, cannot wait for
    /// a READ that needs a FUSE thread (a READ holds them until answered).
    /// `caller`: see Checkpoints.
    Result<FileHandle> open(InodeNo ino, int flags, const Push& push = nullptr, CallerId caller = 0);
    Result<void> opendir(InodeNo ino);
    /// Read up to `size` bytes at `offset` (short at EOF, 0 past it).
    Result<std::size_t> read(InodeNo ino, FileHandle fh, std::uint64_t offset, std::size_t size, char* buffer);
    Result<std::size_t> read(InodeNo ino, std::uint64_t offset, std::size_t size, char* buffer) {
        return read(ino, 0, offset, size, buffer);
    }
    /// The same bytes as slices of cached blocks (no copy), for the FUSE reply.
    Result<ReadSlices> read_slices(InodeNo ino, FileHandle fh, std::uint64_t offset, std::size_t size);
    static constexpr std::uint64_t kPushMax = 1 << 20;
    Result<std::size_t> write(InodeNo ino, FileHandle fh, std::uint64_t offset, const char* data, std::size_t size,
                              CallerId caller = 0);
    Result<void> flush(InodeNo ino, FileHandle fh, CallerId caller = 0);
    Result<void> fsync(InodeNo ino, FileHandle fh);
    void release(InodeNo ino, FileHandle fh);

    Result<std::pair<Attr, FileHandle>> create(InodeNo parent, std::string_view name, mode_t mode, int flags,
                                               CallerId caller = 0);
    Result<Attr> mkdir(InodeNo parent, std::string_view name, mode_t mode);
    Result<void> unlink(InodeNo parent, std::string_view name);
    Result<void> rmdir(InodeNo parent, std::string_view name);
    Result<void> rename(InodeNo parent, std::string_view name, InodeNo new_parent, std::string_view new_name,
                        unsigned flags);
    Result<void> setxattr(InodeNo ino, std::string_view name, std::string_view value, int flags);
    Result<std::string> getxattr(InodeNo ino, std::string_view name);
    Result<std::vector<std::string>> listxattr(InodeNo ino);
    Result<void> removexattr(InodeNo ino, std::string_view name);
    /// Changes this filesystem never supports anywhere: symlinks, hard links,
    /// device nodes (EROFS outside checkpoints, EPERM inside).
    Result<void> modify(InodeNo parent_or_ino) const;
    struct statvfs statfs() const;

    std::size_t inode_count() const { return nodes_.size(); }

private:
    // The static tree is one array in breadth-first order, so each directory's
    // children are a contiguous range sorted by name (lookup is a binary search)
    // and names live in one arena: about 48 bytes per node and no per-node
    // allocation, against ~100 with a std::string and a child vector each.
    struct Node {
        std::uint64_t name_offset = 0;  // into names_
        std::uint32_t name_length = 0;
        std::uint32_t parent = 0;  // ino; 0 for the root
        std::uint64_t offset = 0;  // files: start inside the object
        std::uint64_t size = 0;    // files
        std::uint32_t object = 0;  // files: the object holding the bytes; dirs: first child's index
        std::uint32_t children = 0;  // dirs: how many
        std::uint32_t subdirs = 0;   // dirs: for st_nlink
        bool is_dir = false;
        bool is_sample = false;  // a file under samples/ (not a shard)
    };
    Filesystem(Fetcher& fetcher, FsOptions options) : fetcher_(fetcher), options_(options) {}
    const Node& node(InodeNo ino) const;
    std::string_view name_of(const Node& n) const { return {names_.data() + n.name_offset, n.name_length}; }
    Attr attr_of(InodeNo ino) const;
    bool ckpt(InodeNo ino) const { return checkpoints_ != nullptr && checkpoints_->owns(ino); }

    Fetcher& fetcher_;
    FsOptions options_;
    std::vector<Node> nodes_;  // nodes_[ino - 1]
    std::string names_;        // every node's name, back to back
    std::uint64_t total_bytes_ = 0;
    InodeNo checkpoints_ino_ = 0;
    Checkpoints* checkpoints_ = nullptr;
    bool pushable(const Node& n) const { return n.is_sample && n.size != 0 && n.size <= kPushMax; }
    // Open handles of pushable samples, by inode, in stripes.
    struct OpenStripe {
        std::mutex mutex;  // held across a push; then pushed_mutex_
        std::unordered_map<InodeNo, std::uint32_t> open;
    };
    static constexpr std::size_t kOpenStripes = 64;
    std::array<OpenStripe, kOpenStripes> open_stripes_;
    std::mutex pushed_mutex_;
    std::vector<bool> pushed_;  // [ino - 1]: handed to a push
};

}  // namespace shelbyfs
