// Filesystem: the FUSE-free core. Inode-numbered operations returning Result.
//
// The tree is built once from the manifest and never changes:
//   /samples/<path>       each sample's bytes (a range of its shard)
//   /shards/<name>        each shard's bytes
//   /checkpoints/         writable area (writes arrive in a later change; EROFS today)
// Every file is a byte range of one object, so one read path serves both.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shelbyfs/fetcher.h"
#include "shelbyfs/manifest.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

using InodeNo = std::uint64_t;
inline constexpr InodeNo kRootIno = 1;  // FUSE_ROOT_ID

struct FsOptions {
    double ttl_seconds = 3600.0;  ///< entry/attr timeout: the tree is immutable
    uid_t uid = 0;
    gid_t gid = 0;
    std::int64_t mtime = 0;  ///< shown on every node (the manifest's mtime)
};

struct Attr {
    struct stat st {};
    double ttl = 0;
};

struct DirEntry {
    std::string name;
    InodeNo ino = 0;
    mode_t type = 0;  ///< S_IFDIR or S_IFREG
};

/// Thread-safe: the tree is immutable after create(), and reads go to the
/// thread-safe Fetcher. Unknown inode numbers are a broken invariant (the
/// kernel only uses numbers we gave it) and abort.
class Filesystem {
public:
    /// Build the tree. Fails (InvalidArgument) only on conflicts validate()
    /// cannot see; the manifest must already be validated.
    static Result<std::unique_ptr<Filesystem>> create(const Manifest& manifest, Fetcher& fetcher, FsOptions options);

    Result<Attr> lookup(InodeNo parent, std::string_view name) const;
    Result<Attr> getattr(InodeNo ino) const;
    /// Entries of a directory, "." and ".." first.
    Result<std::vector<DirEntry>> readdir(InodeNo ino) const;
    /// Check an open: EISDIR for directories, EROFS for write access.
    Result<void> open(InodeNo ino, int flags) const;
    Result<void> opendir(InodeNo ino) const;
    /// Read up to `size` bytes at `offset` (short at EOF, 0 past it).
    Result<std::size_t> read(InodeNo ino, std::uint64_t offset, std::size_t size, char* buffer) const;
    /// Any namespace or metadata change (create, mkdir, unlink, rename, setattr, ...).
    Result<void> modify(InodeNo parent_or_ino) const;
    struct statvfs statfs() const;

    std::size_t inode_count() const { return nodes_.size(); }

private:
    struct Node {
        std::string name;
        InodeNo parent = 0;
        bool is_dir = false;
        std::uint32_t object = 0;  // files: the object holding the bytes
        std::uint64_t offset = 0;  // files: start inside the object
        std::uint64_t size = 0;
        std::uint32_t subdirs = 0;     // dirs: for st_nlink
        std::vector<InodeNo> children;  // dirs: sorted by name
    };
    Filesystem(Fetcher& fetcher, FsOptions options) : fetcher_(fetcher), options_(options) {}
    const Node& node(InodeNo ino) const;
    InodeNo add_node(Node n);
    Attr attr_of(InodeNo ino) const;

    Fetcher& fetcher_;
    FsOptions options_;
    std::vector<Node> nodes_;  // nodes_[ino - 1]
    std::uint64_t total_bytes_ = 0;
    InodeNo checkpoints_ino_ = 0;
};

}  // namespace shelbyfs
