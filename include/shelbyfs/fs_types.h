// Types shared by the FUSE-free filesystem layers (Filesystem, Checkpoints)
// and the FUSE adapter: inode numbers, attributes, directory entries.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <optional>
#include <string>

namespace shelbyfs {

using InodeNo = std::uint64_t;
inline constexpr InodeNo kRootIno = 1;  // FUSE_ROOT_ID

/// An open file: 0 for files of the immutable tree, otherwise a handle the
/// checkpoint layer handed out.
using FileHandle = std::uint64_t;

/// The thread behind a request, as the kernel reports it (a TID in the
/// mount's PID namespace); 0 = unknown.
using CallerId = std::uint32_t;

struct Attr {
    struct stat st {};
    double ttl = 0;
};

struct DirEntry {
    std::string name;
    InodeNo ino = 0;
    mode_t type = 0;  ///< S_IFDIR or S_IFREG
};

/// What a setattr asks to change; unset fields stay as they are.
struct SetAttrRequest {
    std::optional<mode_t> mode;
    std::optional<std::uint64_t> size;
    std::optional<std::int64_t> mtime_ns;  ///< already resolved if the caller asked for "now"
    std::optional<std::int64_t> atime_ns;
    bool owner_change = false;  ///< uid/gid: not supported on this filesystem
};

}  // namespace shelbyfs
