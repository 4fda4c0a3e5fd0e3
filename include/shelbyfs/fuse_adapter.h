// The thin FUSE adapter: the fuse_lowlevel_ops table over a Filesystem.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "shelbyfs/filesystem.h"

namespace shelbyfs {

struct FuseOptions {
    std::string mountpoint;
    std::vector<std::string> fuse_args;  ///< passed to fuse_session_new, e.g. {"-o", "allow_other"}
    unsigned max_threads = 16;
    bool debug = false;  ///< libfuse's own request trace
    /// The kernel's read-ahead for this mount, in KiB, written to
    /// /sys/class/bdi/<dev>/read_ahead_kb once mounted (root only; otherwise
    /// logged and left). 0 leaves the kernel's default (128 KiB), which
    /// splits every 1 MiB block into eight requests.
    unsigned read_ahead_kb = 1024;
    /// Called once the kernel mount exists and before requests are served:
    /// the daemon signals its parent here.
    std::function<void()> on_mounted;
};

/// Mount, serve requests on a multithreaded session until unmounted or
/// SIGINT/SIGTERM/SIGHUP, then unmount. Returns 0 on a clean exit; on
/// failure returns non-zero with a message in *error.
int run_fuse(Filesystem& fs, const FuseOptions& options, std::string* error);

}  // namespace shelbyfs
