// The composition root: parse the command line, wire the core, mount or pack.
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>

#include "cli.h"
#include "shelbyfs/blob_reader.h"
#include "shelbyfs/block_cache.h"
#include "shelbyfs/checkpoint.h"
#include "shelbyfs/config.h"
#include "shelbyfs/disk_cache.h"
#include "shelbyfs/fetcher.h"
#include "shelbyfs/filesystem.h"
#include "shelbyfs/fuse_adapter.h"
#include "shelbyfs/http_client.h"
#include "shelbyfs/log.h"
#include "shelbyfs/manifest.h"
#include "shelbyfs/object_store.h"
#include "shelbyfs/pack.h"
#include "shelbyfs/storage.h"
#include "shelbyfs/transfer.h"
#include "shelbyfs/units.h"

namespace shelbyfs {
namespace {

void print_error(const std::string& message) { std::fprintf(stderr, "shelbyfs: %s\n", message.c_str()); }

std::string absolute_path(const std::string& path) {
    char buf[PATH_MAX];
    if (::realpath(path.c_str(), buf) != nullptr) return buf;
    return path;
}

// The daemon's report to the waiting parent: one byte, 0 = mounted.
class StartupPipe {
public:
    bool open() { return ::pipe2(fds_, O_CLOEXEC) == 0; }
    void close_read() { close_fd(fds_[0]); }
    void close_write() { close_fd(fds_[1]); }
    void report(char status) {
        if (fds_[1] >= 0) {
            ssize_t n = ::write(fds_[1], &status, 1);
            (void)n;
            close_write();
        }
    }
    int wait_status() {
        char status = 1;
        ssize_t n;
        do n = ::read(fds_[0], &status, 1);
        while (n < 0 && errno == EINTR);
        close_read();
        return n == 1 ? status : -1;
    }

private:
    static void close_fd(int& fd) {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    int fds_[2] = {-1, -1};
};

// A path made absolute against the working directory (the daemon leaves it),
// whether or not it exists yet.
std::string absolute_lexical(const std::string& path) {
    if (path.empty() || path.front() == '/') return path;
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) == nullptr) return path;
    return std::string(cwd) + "/" + path;
}

std::string default_spool_dir() {
    const char* xdg = std::getenv("XDG_CACHE_HOME");
    if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/shelbyfs/spool";
    const char* home = std::getenv("HOME");
    return std::string(home != nullptr && home[0] == '/' ? home : "/tmp") + "/.cache/shelbyfs/spool";
}

struct LoadedManifest {
    Manifest manifest;
    std::string location;  // absolute path or URL: the base for relative shards
    std::int64_t mtime = 0;
};

// The profile for --config/--profile, its warnings printed.
Result<Profile> load_storage_profile(const std::string& config_path, const std::string& profile) {
    ConfigRequest request;
    request.config_path = config_path;
    request.profile = profile;
    auto loaded = load_profile(request);
    if (!loaded) return std::move(loaded).error();
    for (const auto& w : loaded->warnings) std::fprintf(stderr, "shelbyfs: warning: %s\n", w.c_str());
    return loaded;
}

Result<LoadedManifest> load_manifest(const std::string& given, Storage& storage) {
    LoadedManifest out;
    std::string text;
    if (is_url(given)) {
        if (!is_supported_scheme(given))
            return make_error(Errc::InvalidArgument,
                              "manifest " + given + ": unsupported URL scheme (use http://, https://, s3:// or shelby://)");
        auto body = storage.read_whole(given);
        if (!body) return make_error(body.error().code, "cannot fetch manifest: " + body.error().message);
        text = std::move(*body);
        out.location = given;
        out.mtime = std::time(nullptr);
    } else {
        out.location = absolute_path(given);
        auto body = read_local_file(out.location);
        if (!body) return make_error(body.error().code, "cannot read manifest " + body.error().message);
        text = std::move(*body);
        struct stat st {};
        if (::stat(out.location.c_str(), &st) == 0) out.mtime = st.st_mtim.tv_sec;
    }
    auto parsed = Manifest::parse(text, given);
    if (!parsed) return std::move(parsed).error();
    out.manifest = std::move(*parsed);
    return out;
}

int run_mount(cli::MountCommand cmd) {
    auto profile = load_storage_profile(cmd.config_path, cmd.profile);
    if (!profile) {
        print_error(profile.error().message);
        return cli::kExitFailure;
    }
    if (auto err = cli::apply_profile_options(cmd, profile->mount_options, profile->origin); !err.empty()) {
        print_error(err);
        return cli::kExitFailure;
    }
    struct stat st {};
    if (::stat(cmd.mountpoint.c_str(), &st) != 0) {
        print_error("mountpoint " + cmd.mountpoint + ": " + std::strerror(errno));
        return cli::kExitFailure;
    }
    if (!S_ISDIR(st.st_mode)) {
        print_error("mountpoint " + cmd.mountpoint + ": not a directory");
        return cli::kExitFailure;
    }
    std::string mountpoint = absolute_path(cmd.mountpoint);
    std::string log_file = cmd.log_file.empty() ? "" : absolute_path(cmd.log_file);
    if (!cmd.log_file.empty() && log_file == cmd.log_file && cmd.log_file.front() != '/') {
        char cwd[PATH_MAX];
        if (::getcwd(cwd, sizeof cwd) != nullptr) log_file = std::string(cwd) + "/" + cmd.log_file;
    }

    StartupPipe pipe;
    bool daemon = !cmd.foreground;
    if (daemon) {
        if (!pipe.open()) {
            print_error(std::string("pipe: ") + std::strerror(errno));
            return cli::kExitFailure;
        }
        pid_t pid = ::fork();
        if (pid < 0) {
            print_error(std::string("fork: ") + std::strerror(errno));
            return cli::kExitFailure;
        }
        if (pid > 0) {
            pipe.close_write();
            int status = pipe.wait_status();
            if (status == 0) return cli::kExitOk;
            if (status < 0) print_error("the daemon exited during start-up");
            ::waitpid(pid, nullptr, WNOHANG);
            return cli::kExitFailure;
        }
        pipe.close_read();
    }
    auto fail = [&](const std::string& message) {
        print_error(message);
        pipe.report(1);
        return cli::kExitFailure;
    };

    log::set_level(cmd.debug ? log::Level::Debug : log::Level::Info);
    // A daemon without a log file discards its log once detached; before
    // that, start-up must print only the one message that says what failed.
    if (daemon && log_file.empty() && !cmd.debug) log::set_level(log::Level::Error);
    if (!log_file.empty() && !log::set_file(log_file.c_str()))
        return fail("log_file " + log_file + ": " + std::strerror(errno));

    HttpOptions http_options;
    http_options.max_retries = cmd.retries;
    auto to_ms = [](double seconds) { return std::chrono::milliseconds(static_cast<long>(std::ceil(seconds * 1000))); };
    http_options.stall_timeout = to_ms(cmd.timeout_s);
    http_options.connect_timeout = to_ms(cmd.connect_timeout_s);
    HttpClient http(http_options);
    Storage storage(http, std::move(*profile));

    auto loaded = load_manifest(cmd.manifest, storage);
    if (!loaded) return fail(loaded.error().message);
    const Manifest& manifest = loaded->manifest;

    if (cmd.cache_size < manifest.block_size)
        return fail("-o cache_size=" + format_size(cmd.cache_size) + " is smaller than the manifest's block size (" +
                    format_size(manifest.block_size) + "): nothing could be cached");

    std::vector<ObjectSpec> objects;
    objects.reserve(manifest.shards.size());
    for (const ShardInfo& s : manifest.shards)
        objects.push_back(ObjectSpec{s.name, resolve_location(loaded->location, s.location), s.size,
                                     manifest.block_size, s.blocks});
    BlobReader& reader = storage.reader();
    BlockCache cache(cmd.cache_size);
    std::unique_ptr<DiskCache> disk_cache;
    if (!cmd.cache_dir.empty()) {
        // Absolute: the daemon leaves its working directory once mounted.
        disk_cache = std::make_unique<DiskCache>(absolute_lexical(cmd.cache_dir), cmd.disk_cache_size);
        if (!disk_cache->is_enabled())
            std::fprintf(stderr, "shelbyfs: warning: -o cache_dir=%s is not usable; running without a disk cache\n",
                         cmd.cache_dir.c_str());
    }
    FetcherOptions fetcher_options;
    fetcher_options.prefetch_blocks = cmd.prefetch;
    // Shards of up to 8 blocks come whole at their first read; when the whole
    // dataset fits in the cache, shards up to the prefetch budget do.
    std::uint64_t dataset_bytes = 0;
    for (const ShardInfo& s : manifest.shards) dataset_bytes += s.size;
    fetcher_options.whole_object_blocks = 8;
    fetcher_options.dataset_fits_cache = dataset_bytes <= cmd.cache_size;
    fetcher_options.disk_cache = disk_cache.get();
    Fetcher fetcher(reader, cache, std::move(objects), fetcher_options);
    FsOptions fs_options;
    fs_options.uid = ::getuid();
    fs_options.gid = ::getgid();
    fs_options.mtime = loaded->mtime;
    auto fs = Filesystem::create(manifest, fetcher, fs_options);
    if (!fs) return fail(cmd.manifest + ": " + fs.error().message);
    // The tree holds everything the mount needs from the samples; a million
    // of them are ~100 MiB that would otherwise stay resident.
    const std::size_t sample_count = manifest.samples.size();
    loaded->manifest.samples = {};
    // Hand the freed paths (a million small blocks below the tree's) back to
    // the kernel; glibc keeps them otherwise, ~140 MiB of idle RSS.
    ::malloc_trim(0);
    // From here on memory churns in block-sized pieces (fetched blocks,
    // evicted blocks). glibc's default hands many freed blocks back to the
    // kernel (each one mmap'd until its dynamic threshold adapts) and faults
    // a zeroed one in for the next: 20% of the daemon's CPU in a cold 1 GiB
    // read. Keep blocks up to 32 MiB on the heap; trim a heap's top beyond
    // 2 MiB as before, so idle memory still goes back (RSS stays bounded).
    ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
    ::mallopt(M_TRIM_THRESHOLD, 2 << 20);

    // Checkpoints: an explicit -o checkpoints that cannot be used fails the
    // mount; the default location only warns (a read-only dataset server).
    std::unique_ptr<ObjectStore> store;
    std::unique_ptr<Checkpoints> checkpoints;
    if (cmd.checkpoints != "off") {
        bool explicit_location = !cmd.checkpoints.empty();
        std::string location = explicit_location ? (is_url(cmd.checkpoints) ? cmd.checkpoints
                                                                            : absolute_lexical(cmd.checkpoints))
                                                 : resolve_location(loaded->location, "checkpoints/");
        std::string spool_base = cmd.spool_dir.empty() ? default_spool_dir() : absolute_lexical(cmd.spool_dir);
        auto opened = storage.open_store(location);
        Result<std::unique_ptr<Checkpoints>> ck = make_error(Errc::Internal, "not opened");
        if (opened) {
            store = std::move(*opened);
            CheckpointOptions ck_options;
            // One spool per store, so a crashed mount's uploads resume into the
            // right one: the same bucket name at another endpoint is another store.
            std::string identity = store->describe();
            if (location.rfind("s3://", 0) == 0) identity += " at " + storage.profile().s3.endpoint;
            if (location.rfind("shelby://", 0) == 0 && storage.profile().shelby.gateway)
                identity += " at " + storage.profile().shelby.gateway->endpoint;
            ck_options.spool_dir = spool_base + "/" + ContentHash::of(identity).hex().substr(0, 16);
            ck_options.spool_size = cmd.spool_size;
            ck_options.block_size = manifest.block_size;
            ck_options.uid = fs_options.uid;
            ck_options.gid = fs_options.gid;
            ck_options.mount_time_ns = loaded->mtime * 1'000'000'000;
            ck = Checkpoints::open(*store, fetcher, ck_options, (*fs)->checkpoints_ino());
        } else {
            ck = std::move(opened).error();
        }
        if (ck) {
            checkpoints = std::move(*ck);
            (*fs)->attach_checkpoints(checkpoints.get());
            log::info("mount", "checkpoints: " + store->describe() + ", spool " + spool_base);
        } else if (explicit_location) {
            return fail("-o checkpoints=" + cmd.checkpoints + ": " + ck.error().message);
        } else {
            std::fprintf(stderr, "shelbyfs: warning: checkpoints/ is read-only: %s (choose a store with -o checkpoints=LOCATION)\n",
                         ck.error().message.c_str());
            log::warn("mount", "checkpoints/ is read-only: " + ck.error().message);
        }
    }

    FuseOptions fuse_options;
    fuse_options.mountpoint = mountpoint;
    fuse_options.fuse_args = {"-o", "fsname=shelbyfs", "-o", "subtype=shelbyfs", "-o", "default_permissions"};
    fuse_options.fuse_args.insert(fuse_options.fuse_args.end(), cmd.fuse_args.begin(), cmd.fuse_args.end());
    fuse_options.max_threads = cmd.threads;
    fuse_options.read_ahead_kb = static_cast<unsigned>(cmd.read_ahead / 1024);
    fuse_options.debug = cmd.fuse_debug;
    fuse_options.on_mounted = [&] {
        log::info("mount", "mounted " + cmd.manifest + " on " + mountpoint + ": " +
                               std::to_string(sample_count) + " samples in " +
                               std::to_string(manifest.shards.size()) + " shards, cache " +
                               format_size(cmd.cache_size));
        if (!daemon) return;
        ::setsid();
        if (::chdir("/") != 0) log::warn("mount", "chdir / failed");
        int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null_fd >= 0) {
            ::dup2(null_fd, 0);
            ::dup2(null_fd, 1);
            ::dup2(null_fd, 2);
            if (null_fd > 2) ::close(null_fd);
        }
        pipe.report(0);
    };
    std::string error;
    int rc = run_fuse(**fs, fuse_options, &error);
    if (rc != 0) return fail(error);
    auto cs = cache.stats();
    auto fst = fetcher.stats();
    log::info("mount", "unmounted " + mountpoint + ": cache hits " + std::to_string(cs.hits) + ", misses " +
                           std::to_string(cs.misses) + ", fetched " + format_size(fst.bytes_fetched) + ": " +
                           std::to_string(fst.fetches) + " blocks on demand, " + std::to_string(fst.prefetched) +
                           " prefetched (" + std::to_string(fst.prefetch_hits) + " of them read)");
    if (disk_cache) {
        auto ds = disk_cache->stats();
        log::info("mount", "disk cache " + disk_cache->dir() + ": hits " + std::to_string(ds.hits) + ", misses " +
                               std::to_string(ds.misses) + ", inserts " + std::to_string(ds.inserts) +
                               ", evictions " + std::to_string(ds.evictions) + ", verification failures " +
                               std::to_string(ds.verify_failures) + ", holds " + format_size(ds.bytes));
    }
    if (checkpoints) {
        auto ck = checkpoints->stats();
        log::info("mount", "checkpoints: uploaded " + std::to_string(ck.uploads) + " objects (" +
                               format_size(ck.upload_bytes) + ", " + std::to_string(ck.streamed) +
                               " streamed while written), " + std::to_string(ck.deduplicated) +
                               " already stored, " + std::to_string(ck.records) + " index records, " +
                               std::to_string(ck.failures) + " failed saves");
    }
    return cli::kExitOk;
}

// bench: hand over to tools/bench.py (Python: torchvision, nginx, rclone
// orchestration), telling it to measure this very binary.
int run_bench(const cli::BenchCommand& cmd) {
    const char* env = std::getenv("SHELBYFS_TOOLS_DIR");
    std::string tools = env != nullptr && env[0] != '\0' ? env : SHELBYFS_TOOLS_DIR;
    std::string script = tools + "/bench.py";
    if (::access(script.c_str(), R_OK) != 0) {
        print_error("bench: " + script + " not found (run from a source tree, or set SHELBYFS_TOOLS_DIR)");
        return cli::kExitFailure;
    }
    char self[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    std::vector<std::string> args{"/usr/bin/python3", script};
    if (n > 0) {
        self[n] = '\0';
        args.insert(args.end(), {"--shelbyfs", self});
    }
    args.insert(args.end(), cmd.args.begin(), cmd.args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    print_error("bench: cannot run /usr/bin/python3: " + std::string(std::strerror(errno)));
    return cli::kExitFailure;
}

// Runs `body(storage)` for a one-shot command (push, verify): the profile of
// --config/--profile, and a client with default retries and timeouts.
template <typename Body>
int with_storage(const std::string& config_path, const std::string& profile_name, Body body) {
    auto profile = load_storage_profile(config_path, profile_name);
    if (!profile) {
        print_error(profile.error().message);
        return cli::kExitFailure;
    }
    HttpClient http;
    Storage storage(http, std::move(*profile));
    return body(storage);
}

int run_push(const cli::PushCommand& cmd, Storage& storage) {
    PushOptions options;
    options.out_dir = cmd.out_dir;
    options.dest = cmd.dest;
    options.jobs = cmd.jobs;
    options.progress = cmd.progress;
    auto summary = push(storage, options);
    if (!summary) {
        print_error(summary.error().message);
        return cli::kExitFailure;
    }
    const PushSummary& s = *summary;
    const double rate = s.seconds > 0 ? static_cast<double>(s.bytes_uploaded) / s.seconds : 0;
    std::printf("pushed %llu shard%s: %llu uploaded (%s, %s/s), %llu already there; manifest: %s\n",
                static_cast<unsigned long long>(s.shards), s.shards == 1 ? "" : "s",
                static_cast<unsigned long long>(s.uploaded), format_size(s.bytes_uploaded).c_str(),
                format_size(static_cast<std::uint64_t>(rate)).c_str(), static_cast<unsigned long long>(s.skipped),
                s.manifest_location.c_str());
    return cli::kExitOk;
}

int run_verify(const cli::VerifyCommand& cmd, Storage& storage) {
    VerifyOptions options;
    options.manifest = cmd.manifest;
    options.jobs = cmd.jobs;
    options.progress = cmd.progress;
    auto report = verify(storage, options);
    if (!report) {
        print_error(report.error().message);
        return cli::kExitFailure;
    }
    for (const auto& p : report->problems) {
        std::fprintf(stderr, "shelbyfs: verify: BAD %s (%s): %s\n", p.shard.c_str(), p.location.c_str(), p.what.c_str());
    }
    const std::uint64_t good = report->shards - report->problems.size();
    std::printf("verified %llu of %llu shard%s (%s) in %.2f s: %s\n", static_cast<unsigned long long>(good),
                static_cast<unsigned long long>(report->shards), report->shards == 1 ? "" : "s",
                format_size(report->bytes).c_str(), report->seconds,
                report->problems.empty() ? "all good"
                                         : (std::to_string(report->problems.size()) + " bad").c_str());
    return report->problems.empty() ? cli::kExitOk : cli::kExitFailure;
}

int run_pack(const cli::PackCommand& cmd) {
    auto summary = pack(cmd.options);
    if (!summary) {
        print_error(summary.error().message);
        return cli::kExitFailure;
    }
    const PackSummary& s = *summary;
    double rate = s.seconds > 0 ? static_cast<double>(s.bytes) / s.seconds : 0;
    std::printf("packed %llu files (%s) into %llu shard%s (%s) in %.2f s, %s/s -> %s/manifest.json\n",
                static_cast<unsigned long long>(s.files), format_size(s.bytes).c_str(),
                static_cast<unsigned long long>(s.shards), s.shards == 1 ? "" : "s",
                format_size(s.shard_bytes).c_str(), s.seconds, format_size(static_cast<std::uint64_t>(rate)).c_str(),
                cmd.options.out_dir.c_str());
    return cli::kExitOk;
}

}  // namespace
}  // namespace shelbyfs

int main(int argc, char** argv) {
    using namespace shelbyfs;
    std::signal(SIGPIPE, SIG_IGN);
    auto parsed = cli::parse(argc, argv);
    if (!parsed.command) {
        std::fprintf(stderr, "shelbyfs: %s\nTry 'shelbyfs --help'.\n", parsed.error.c_str());
        return cli::kExitUsage;
    }
    try {
        return std::visit(
            [](auto& cmd) -> int {
                using T = std::decay_t<decltype(cmd)>;
                if constexpr (std::is_same_v<T, cli::HelpCommand>) {
                    std::fputs(cmd.text.c_str(), stdout);
                    return cli::kExitOk;
                } else if constexpr (std::is_same_v<T, cli::VersionCommand>) {
                    std::puts("shelbyfs " SHELBYFS_VERSION);
                    return cli::kExitOk;
                } else if constexpr (std::is_same_v<T, cli::MountCommand>) {
                    return run_mount(cmd);
                } else if constexpr (std::is_same_v<T, cli::BenchCommand>) {
                    return run_bench(cmd);
                } else if constexpr (std::is_same_v<T, cli::PushCommand>) {
                    return with_storage(cmd.config_path, cmd.profile,
                                        [&](Storage& storage) { return run_push(cmd, storage); });
                } else if constexpr (std::is_same_v<T, cli::VerifyCommand>) {
                    return with_storage(cmd.config_path, cmd.profile,
                                        [&](Storage& storage) { return run_verify(cmd, storage); });
                } else {
                    return run_pack(cmd);
                }
            },
            *parsed.command);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "shelbyfs: unexpected error: %s\n", e.what());
        return cli::kExitFailure;
    }
}
