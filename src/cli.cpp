// Parsing of `shelbyfs pack` and `shelbyfs mount` command lines, and --help.
#include "cli.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "shelbyfs/units.h"

namespace shelbyfs::cli {

std::string usage() {
    return R"(Usage:
  shelbyfs pack <src-dir> <out-dir> [--shard-size SIZE] [--block-size SIZE]
                [--base-url URL] [--progress | --no-progress]
  shelbyfs mount <manifest> <mountpoint> [-f] [-d] [-o opt[,opt...]]
                 [--config FILE] [--profile NAME]
  shelbyfs push <out-dir> <dest> [--jobs N] [--progress | --no-progress]
                [--config FILE] [--profile NAME]
  shelbyfs verify <manifest> [--jobs N] [--progress | --no-progress]
                  [--config FILE] [--profile NAME]
  shelbyfs bench [--quick] [--out DIR] [...]   (see shelbyfs bench --help)
  shelbyfs --help | --version

Locations (manifests, shards, --base-url, -o checkpoints=, push destinations):
  /path or relative/path       local files
  http://host/path, https://   plain HTTP(S): range GETs; WebDAV PUT for writes
  s3://bucket/key              S3, Akave O3 or any S3-compatible endpoint, path-
                               style, SigV4; keys raw as the AWS CLI takes them
                               (s3://b/data sets/a+b.tar)
  shelby://<account>/<blob>    a Shelby blob, read from the RPC node; written
                               through the Shelby S3 gateway or the shelby CLI
Credentials and endpoints come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL,
AWS_PROFILE, SHELBY_RPC_URL, SHELBY_API_KEY, SHELBY_ACCOUNT) and from the
profiles of a TOML file (shelbyfs.toml(5)):
  --config FILE       default ~/.config/shelbyfs/config.toml (if it exists)
  --profile NAME      a profile of that file, or a preset: aws, akave,
                      shelbynet, shelby-local (also -o profile=NAME)

pack: write the files under <src-dir> into tar shards <out-dir>/shard-NNNNNN.tar
and a manifest <out-dir>/manifest.json recording where every sample sits.
  --shard-size SIZE   target shard size (default 64MiB); a larger sample gets
                      a shard of its own
  --block-size SIZE   verification and fetch unit recorded in the manifest
                      (default 1MiB)
  --base-url URL      record shard locations as URL/<shard> instead of paths
                      relative to the manifest
  --progress, --no-progress
                      force the progress line on or off (default: on when
                      stderr is a terminal)

mount: present <manifest> (a path or a URL, see Locations) at <mountpoint>:
  <mountpoint>/samples/<path>   each sample's bytes
  <mountpoint>/shards/<name>    each shard's bytes
  <mountpoint>/checkpoints/     writable: files saved here are uploaded as
                                immutable objects named by their XXH3-128 hash
Blocks are fetched on demand with range requests, verified against the
manifest's hashes, and kept in an in-memory LRU cache. A file written under
checkpoints/ is uploaded when it is closed or fsynced (on a WebDAV store, a
file being appended to is sent while it is written, from 8 MiB on), and
close()/fsync() return only once it is stored (EIO if it could not be).
Every earlier version stays readable under checkpoints/.versions/. The
command returns once the mount is ready and leaves a daemon; unmount with
`fusermount3 -u <mountpoint>`.
  -f                  stay in the foreground, logging to stderr
  -d                  foreground with libfuse's request trace
  -o cache_size=SIZE  block cache budget (default 512MiB; at least the
                      manifest's block size)
  -o memory_limit=SIZE  one budget for the cache, prefetch and fetches in
                      flight (at least 16MiB): the cache gets 4/5 of what
                      is left after min(32MiB, SIZE/4); instead of cache_size
  -o cache_dir=DIR    also keep verified blocks in DIR, named by their hash,
                      for later mounts (default: off); DIR may be shared
  -o disk_cache_size=SIZE  most bytes kept in cache_dir; the least recently
                      used blocks go first (default 10GiB)
  -o prefetch=N       prefetch up to N blocks ahead of a sequential reader
                      of a shard (default 32; 0 turns prefetch off); a shard
                      of up to 8 blocks, or up to cache_size/4 when the whole
                      dataset fits in the cache, comes whole at its first read
  -o read_ahead=SIZE  the kernel's read-ahead for this mount, set through
                      /sys/class/bdi (needs root; 4KiB..1MiB, default 1MiB:
                      one request per block; 0 keeps the kernel's 128KiB)
  -o threads=N        FUSE worker threads (default 16)
  -o retries=N        retries of a failed HTTP request (default 5)
  -o timeout=SECS     abort a transfer that stalls this long (default 30)
  -o connect_timeout=SECS  (default 10)
  -o log_file=PATH    append the daemon's log to PATH (default: discarded
                      unless -f)
  -o debug            verbose log
  -o checkpoints=LOCATION  where checkpoints are stored: a directory, an
                      http(s) WebDAV URL, s3://bucket/prefix/ or
                      shelby://account/prefix/ (default: checkpoints/ beside
                      the manifest); 'off' keeps checkpoints/ empty and
                      read-only
  -o profile=NAME     as --profile; the profile's cache and spool settings
                      apply unless given here
  -o spool_dir=DIR    local spool of checkpoint data waiting for upload
                      (default: ~/.cache/shelbyfs/spool)
  -o spool_size=SIZE  most spooled bytes at once; beyond it writes fail
                      with ENOSPC (default 8GiB)
  -o allow_other, allow_root, default_permissions, auto_unmount, fsname=NAME
                      and other FUSE mount options are passed to libfuse

push: upload what `shelbyfs pack` wrote in <out-dir> to <dest> (a location
prefix, e.g. s3://bucket/datasets/fmnist/): every shard under its name, with
--jobs N (default 4) in flight and large S3 uploads in parallel parts, then
<dest>/manifest.json with every location rewritten to its absolute place. A
shard already there with the right size and content is skipped, so an
interrupted push can simply be run again; the manifest goes last.

verify: read every shard of <manifest> at its location and check its size,
every block hash and the whole-shard hash; prints each bad shard and what is
wrong with it, and exits 1 if any is missing or damaged.

bench: run the benchmark (tools/bench.py of the source tree, with Debian's
/usr/bin/python3) against this binary: ImageFolder over a local directory vs
the mount cold and warm, sequential and random reads, checkpoint cp, memory,
a 1M-sample manifest, with curl and rclone as ceilings and peers. Writes
bench-out/ (results.json, results.md, chart.svg, report.html).

Sizes take a K, M, G or T suffix (binary: 1K = 1KiB = 1024), e.g. 64MiB.
Exit status: 0 success, 1 failure (the message says what and where; for
verify: a missing or damaged shard), 2 command-line usage error.
)";
}

std::uint64_t memory_limit_cache_size(std::uint64_t limit) {
    // Reserve up to 32 MiB (a quarter of a small limit) for demand fetches
    // in flight (16 threads x 1 MiB blocks) and the daemon itself;
    // prefetches in flight may add a quarter of the cache on top of it, so
    // the cache gets 4/5 of the rest.
    std::uint64_t reserve = std::min<std::uint64_t>(32ull << 20, limit / 4);
    return (limit - reserve) / 5 * 4;
}

namespace {

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

std::optional<double> parse_seconds(std::string_view text) {
    std::string s(text);
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || end == nullptr || *end != '\0' || !(v > 0) || v > 86400) return std::nullopt;
    return v;
}

std::optional<long> parse_count(std::string_view text, long min, long max) {
    std::string s(text);
    char* end = nullptr;
    long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || end == nullptr || *end != '\0' || v < min || v > max) return std::nullopt;
    return v;
}

// Apply one "-o" item; our own options are consumed, others go to libfuse.
std::string apply_mount_option(MountCommand& m, std::string_view opt) {
    auto eq = opt.find('=');
    std::string_view key = opt.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? std::string_view{} : opt.substr(eq + 1);
    auto need_value = [&]() { return eq == std::string_view::npos || value.empty(); };
    if (key == "cache_size") {
        auto v = need_value() ? std::nullopt : parse_size(value);
        if (!v || *v < 1024 * 1024) return "bad -o cache_size: '" + std::string(value) + "' (want a size >= 1MiB)";
        m.cache_size = *v;
        m.cache_size_given = true;
        if (m.memory_limit != 0) return "give -o cache_size or -o memory_limit, not both";
    } else if (key == "memory_limit") {
        auto v = need_value() ? std::nullopt : parse_size(value);
        if (!v || *v < 16 * 1024 * 1024)
            return "bad -o memory_limit: '" + std::string(value) + "' (want a size >= 16MiB)";
        if (m.cache_size_given) return "give -o cache_size or -o memory_limit, not both";
        m.memory_limit = *v;
        m.cache_size = memory_limit_cache_size(*v);
    } else if (key == "cache_dir") {
        if (need_value()) return "bad -o cache_dir: a path is required";
        m.cache_dir = std::string(value);
    } else if (key == "disk_cache_size") {
        auto v = need_value() ? std::nullopt : parse_size(value);
        if (!v || *v < 1024 * 1024)
            return "bad -o disk_cache_size: '" + std::string(value) + "' (want a size >= 1MiB)";
        m.disk_cache_size = *v;
    } else if (key == "prefetch") {
        auto v = need_value() ? std::nullopt : parse_count(value, 0, 1024);
        if (!v) return "bad -o prefetch: '" + std::string(value) + "' (want 0..1024 blocks)";
        m.prefetch = static_cast<std::uint32_t>(*v);
    } else if (key == "read_ahead") {
        auto v = need_value() ? std::nullopt : parse_size(value);
        // At most 1 MiB: the INIT reply (max_readahead, fuse_adapter.cpp)
        // caps it there, and no request is larger anyway.
        if (!v || (*v != 0 && (*v < 4096 || *v > 1024 * 1024 || *v % 1024 != 0)))
            return "bad -o read_ahead: '" + std::string(value) + "' (want 0, or 4KiB..1MiB in whole KiB)";
        m.read_ahead = *v;
    } else if (key == "threads") {
        auto v = need_value() ? std::nullopt : parse_count(value, 1, 1024);
        if (!v) return "bad -o threads: '" + std::string(value) + "' (want 1..1024)";
        m.threads = static_cast<unsigned>(*v);
    } else if (key == "retries") {
        auto v = need_value() ? std::nullopt : parse_count(value, 0, 100);
        if (!v) return "bad -o retries: '" + std::string(value) + "' (want 0..100)";
        m.retries = static_cast<int>(*v);
    } else if (key == "timeout" || key == "connect_timeout") {
        auto v = need_value() ? std::nullopt : parse_seconds(value);
        if (!v) return "bad -o " + std::string(key) + ": '" + std::string(value) + "' (want seconds > 0)";
        (key == "timeout" ? m.timeout_s : m.connect_timeout_s) = *v;
    } else if (key == "log_file") {
        if (need_value()) return "bad -o log_file: a path is required";
        m.log_file = std::string(value);
    } else if (key == "debug") {
        m.debug = true;
    } else if (key == "checkpoints") {
        if (need_value()) return "bad -o checkpoints: a directory, a URL or 'off' is required";
        m.checkpoints = std::string(value);
    } else if (key == "spool_dir") {
        if (need_value()) return "bad -o spool_dir: a path is required";
        m.spool_dir = std::string(value);
    } else if (key == "profile") {
        if (need_value()) return "bad -o profile: a profile name is required";
        m.profile = std::string(value);
    } else if (key == "spool_size") {
        auto v = need_value() ? std::nullopt : parse_size(value);
        if (!v || *v < 1024 * 1024) return "bad -o spool_size: '" + std::string(value) + "' (want a size >= 1MiB)";
        m.spool_size = *v;
    } else if (!opt.empty()) {
        m.fuse_args.push_back("-o");
        m.fuse_args.emplace_back(opt);
    }
    return {};
}

// --config FILE / --profile NAME (also --x=value) at args[i]: 1 if taken
// (i advanced past a separate value), -1 if the value is missing, 0 if args[i]
// is something else.
int take_config_flag(const std::vector<std::string_view>& args, std::size_t& i, std::string& config,
                     std::string& profile) {
    const std::string_view a = args[i];
    const std::string_view name = a.substr(0, a.find('='));
    if (name != "--config" && name != "--profile") return 0;
    std::string_view value;
    if (a.find('=') != std::string_view::npos) {
        value = a.substr(a.find('=') + 1);
    } else {
        if (i + 1 >= args.size()) return -1;
        value = args[++i];
    }
    if (value.empty()) return -1;
    (name == "--config" ? config : profile) = std::string(value);
    return 1;
}

// The push and verify command lines: positional arguments, --jobs N,
// --progress/--no-progress, --config, --profile.
struct TransferArgs {
    std::vector<std::string_view> positional;
    int jobs = 4;
    Progress progress = Progress::Auto;
    std::string config;
    std::string profile;
};

std::optional<std::string> parse_transfer_args(std::string_view command, const std::vector<std::string_view>& args,
                                               TransferArgs& out) {
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view a = args[i];
        if (auto taken = take_config_flag(args, i, out.config, out.profile); taken != 0) {
            if (taken < 0) return std::string(a.substr(0, a.find('='))) + " needs a value";
            continue;
        }
        if (a == "--jobs" || starts_with(a, "--jobs=") || a == "-j") {
            std::string_view value;
            if (a.find('=') != std::string_view::npos) {
                value = a.substr(a.find('=') + 1);
            } else if (i + 1 < args.size()) {
                value = args[++i];
            }
            auto v = parse_count(value, 1, 64);
            if (!v) return "bad --jobs: '" + std::string(value) + "' (want 1..64)";
            out.jobs = static_cast<int>(*v);
        } else if (a == "--progress") {
            out.progress = Progress::Always;
        } else if (a == "--no-progress") {
            out.progress = Progress::Never;
        } else if (starts_with(a, "-") && a.size() > 1) {
            return std::string(command) + ": unknown option '" + std::string(a) + "'";
        } else {
            out.positional.push_back(a);
        }
    }
    return std::nullopt;
}

ParseResult parse_push(const std::vector<std::string_view>& args) {
    for (auto a : args)
        if (a == "-h" || a == "--help") return {HelpCommand{usage()}, {}};
    TransferArgs t;
    if (auto err = parse_transfer_args("push", args, t)) return {std::nullopt, *err};
    if (t.positional.size() != 2)
        return {std::nullopt, "push: expected <out-dir> <dest-URL>, got " + std::to_string(t.positional.size()) +
                                  " argument(s)"};
    PushCommand p;
    p.out_dir = std::string(t.positional[0]);
    p.dest = std::string(t.positional[1]);
    p.jobs = t.jobs;
    p.progress = t.progress;
    p.config_path = std::move(t.config);
    p.profile = std::move(t.profile);
    return {p, {}};
}

ParseResult parse_verify(const std::vector<std::string_view>& args) {
    for (auto a : args)
        if (a == "-h" || a == "--help") return {HelpCommand{usage()}, {}};
    TransferArgs t;
    if (auto err = parse_transfer_args("verify", args, t)) return {std::nullopt, *err};
    if (t.positional.size() != 1)
        return {std::nullopt, "verify: expected <manifest>, got " + std::to_string(t.positional.size()) +
                                  " argument(s)"};
    VerifyCommand v;
    v.manifest = std::string(t.positional[0]);
    v.jobs = t.jobs;
    v.progress = t.progress;
    v.config_path = std::move(t.config);
    v.profile = std::move(t.profile);
    return {v, {}};
}

ParseResult parse_mount(const std::vector<std::string_view>& args) {
    MountCommand m;
    std::vector<std::string_view> positional;
    for (std::size_t i = 0; i < args.size(); ++i) {
        std::string_view a = args[i];
        std::string_view opts;
        if (a == "-f") {
            m.foreground = true;
            continue;
        }
        if (a == "-d") {
            m.foreground = true;
            m.fuse_debug = true;
            continue;
        }
        if (auto taken = take_config_flag(args, i, m.config_path, m.profile); taken != 0) {
            if (taken < 0) return {std::nullopt, std::string(a.substr(0, a.find('='))) + " needs a value"};
            continue;
        }
        if (a == "-o") {
            if (i + 1 >= args.size()) return {std::nullopt, "-o needs an argument"};
            opts = args[++i];
        } else if (starts_with(a, "-o")) {
            opts = a.substr(2);
        } else if (a == "-h" || a == "--help") {
            return {HelpCommand{usage()}, {}};
        } else if (starts_with(a, "-") && a.size() > 1) {
            return {std::nullopt, "mount: unknown option '" + std::string(a) + "'"};
        } else {
            positional.push_back(a);
            continue;
        }
        std::size_t start = 0;
        while (start <= opts.size()) {
            std::size_t comma = opts.find(',', start);
            if (comma == std::string_view::npos) comma = opts.size();
            const std::string_view item = opts.substr(start, comma - start);
            if (auto err = apply_mount_option(m, item); !err.empty()) return {std::nullopt, err};
            if (!item.empty()) m.options_given.emplace_back(item);
            start = comma + 1;
        }
    }
    if (positional.size() != 2)
        return {std::nullopt, "mount: expected <manifest> <mountpoint>, got " + std::to_string(positional.size()) +
                                  " argument(s)"};
    m.manifest = std::string(positional[0]);
    m.mountpoint = std::string(positional[1]);
    return {m, {}};
}

ParseResult parse_pack(const std::vector<std::string_view>& args) {
    PackCommand p;
    std::vector<std::string_view> positional;
    for (std::size_t i = 0; i < args.size(); ++i) {
        std::string_view a = args[i];
        std::string_view value;
        std::string_view name = a;
        bool has_inline = false;
        if (starts_with(a, "--") && a.find('=') != std::string_view::npos) {
            name = a.substr(0, a.find('='));
            value = a.substr(a.find('=') + 1);
            has_inline = true;
        }
        auto take_value = [&]() -> bool {
            if (has_inline) return true;
            if (i + 1 >= args.size()) return false;
            value = args[++i];
            return true;
        };
        if (name == "--shard-size" || name == "--block-size") {
            if (!take_value()) return {std::nullopt, std::string(name) + " needs a value"};
            auto v = parse_size(value);
            if (!v || *v == 0) return {std::nullopt, "bad " + std::string(name) + ": '" + std::string(value) + "'"};
            if (name == "--block-size" && *v > 256ull * 1024 * 1024)
                return {std::nullopt, "bad --block-size: at most 256MiB"};
            (name == "--shard-size" ? p.options.shard_size : p.options.block_size) = *v;
        } else if (name == "--base-url") {
            if (!take_value() || value.empty()) return {std::nullopt, "--base-url needs a URL"};
            p.options.base_url = std::string(value);
        } else if (a == "--progress") {
            p.options.progress = Progress::Always;
        } else if (a == "--no-progress") {
            p.options.progress = Progress::Never;
        } else if (a == "-h" || a == "--help") {
            return {HelpCommand{usage()}, {}};
        } else if (starts_with(a, "-") && a.size() > 1) {
            return {std::nullopt, "pack: unknown option '" + std::string(a) + "'"};
        } else {
            positional.push_back(a);
        }
    }
    if (positional.size() != 2)
        return {std::nullopt, "pack: expected <src-dir> <out-dir>, got " + std::to_string(positional.size()) +
                                  " argument(s)"};
    p.options.src_dir = std::string(positional[0]);
    p.options.out_dir = std::string(positional[1]);
    return {p, {}};
}

}  // namespace

std::string apply_profile_options(MountCommand& m, const std::vector<std::pair<std::string, std::string>>& options,
                                  const std::string& profile_origin) {
    auto given = [&](std::string_view key) {
        return std::any_of(m.options_given.begin(), m.options_given.end(), [&](const std::string& o) {
            return std::string_view(o).substr(0, o.find('=')) == key;
        });
    };
    MountCommand fresh;
    fresh.manifest = m.manifest;
    fresh.mountpoint = m.mountpoint;
    fresh.foreground = m.foreground;
    fresh.fuse_debug = m.fuse_debug;
    fresh.config_path = m.config_path;
    fresh.profile = m.profile;
    fresh.options_given = m.options_given;
    for (const auto& [key, value] : options) {
        // The command line wins, and its cache_size replaces a profile's memory_limit (and back).
        if (given(key) || ((key == "cache_size" || key == "memory_limit") && (given("cache_size") || given("memory_limit"))))
            continue;
        if (auto err = apply_mount_option(fresh, key + "=" + value); !err.empty()) return profile_origin + ": " + err;
    }
    for (const auto& item : m.options_given) {
        if (auto err = apply_mount_option(fresh, item); !err.empty()) return err;
    }
    m = std::move(fresh);
    return {};
}

ParseResult parse(int argc, char** argv) {
    if (argc < 2) return {std::nullopt, "missing command"};
    std::string_view cmd = argv[1];
    std::vector<std::string_view> rest(argv + 2, argv + argc);
    if (cmd == "-h" || cmd == "--help" || cmd == "help") return {HelpCommand{usage()}, {}};
    if (cmd == "-V" || cmd == "--version") return {VersionCommand{}, {}};
    if (cmd == "mount") return parse_mount(rest);
    if (cmd == "pack") return parse_pack(rest);
    if (cmd == "push") return parse_push(rest);
    if (cmd == "verify") return parse_verify(rest);
    if (cmd == "bench") return {BenchCommand{std::vector<std::string>(rest.begin(), rest.end())}, {}};
    return {std::nullopt, "unknown command '" + std::string(cmd) + "'"};
}

}  // namespace shelbyfs::cli
