// push and verify: whole-dataset transfers and checks through Storage.
#include "shelbyfs/transfer.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/hash.h"
#include "shelbyfs/log.h"
#include "shelbyfs/object_store.h"
#include "shelbyfs/storage.h"

namespace shelbyfs {

namespace {

constexpr std::size_t kReadsInFlight = 8;

std::string range_text(std::uint64_t first, std::uint64_t length) {
    return std::to_string(first) + "-" + std::to_string(first + length - 1);
}

// Runs work(i) for i in [0, count) on `jobs` threads; stops handing out new
// indices once stop() is true.
template <typename Work, typename Stop>
void run_parallel(std::size_t count, int jobs, Work work, Stop stop) {
    std::atomic<std::size_t> next{0};
    auto worker = [&] {
        for (;;) {
            if (stop()) return;
            const std::size_t i = next.fetch_add(1);
            if (i >= count) return;
            work(i);
        }
    };
    const auto n = static_cast<std::size_t>(std::clamp(jobs, 1, 64));
    std::vector<std::thread> threads;
    for (std::size_t t = 1; t < std::min(n, count); ++t) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::string check_stored_shard(Storage& storage, const std::string& location, const ShardInfo& shard,
                               std::uint64_t block_size, ProgressLine* progress) {
    auto size = storage.size_of(location);
    if (size) {
        if (*size != shard.size) {
            return "size " + std::to_string(*size) + " bytes, the manifest says " + std::to_string(shard.size);
        }
    } else if (size.error().code == Errc::NotFound) {
        return "missing: " + size.error().message;
    } else if (size.error().code != Errc::NotSupported) {
        return "cannot check: " + size.error().message;
    }
    BlobReader& reader = storage.reader();
    Hasher whole;
    std::deque<std::pair<std::uint64_t, std::future<Result<std::string>>>> in_flight;
    std::uint64_t next = 0;
    const std::uint64_t blocks = shard.blocks.size();
    while (next < blocks || !in_flight.empty()) {
        while (next < blocks && in_flight.size() < kReadsInFlight) {
            const std::uint64_t offset = next * block_size;
            in_flight.emplace_back(next, reader.read_range(location, offset, std::min(block_size, shard.size - offset)));
            ++next;
        }
        auto [index, future] = std::move(in_flight.front());
        in_flight.pop_front();
        const std::uint64_t offset = index * block_size;
        const std::uint64_t length = std::min(block_size, shard.size - offset);
        auto bytes = future.get();
        if (!bytes) {
            if (bytes.error().code == Errc::NotFound) return "missing: " + bytes.error().message;
            return "block " + std::to_string(index) + " (bytes " + range_text(offset, length) +
                   "): read failed: " + bytes.error().message;
        }
        const ContentHash got = ContentHash::of(*bytes);
        if (got != shard.blocks[index]) {
            return "block " + std::to_string(index) + " (bytes " + range_text(offset, length) +
                   ") is damaged: hash " + got.hex() + ", the manifest says " + shard.blocks[index].hex();
        }
        whole.update(bytes->data(), bytes->size());
        if (progress != nullptr) progress->add_bytes(bytes->size());
    }
    if (const ContentHash got = whole.digest(); got != shard.hash) {
        return "whole-shard hash " + got.hex() + ", the manifest says " + shard.hash.hex();
    }
    if (!size) {
        // The size could not be asked for (the Shelby RPC has no HEAD): the blocks
        // only prove the first shard.size bytes. A blob with more bytes after them
        // answers a one-byte read just past the end; a blob of the right size
        // refuses it (416, or any other error: never a reason to call it bad).
        auto beyond = reader.read_range(location, shard.size, 1).get();
        if (beyond && !beyond->empty()) {
            return "longer than the manifest's " + std::to_string(shard.size) + " bytes (it has a byte at offset " +
                   std::to_string(shard.size) + ")";
        }
    }
    return {};
}

Result<PushSummary> push(Storage& storage, const PushOptions& options) {
    const auto start = std::chrono::steady_clock::now();
    std::error_code ec;
    const std::string out_dir = std::filesystem::absolute(options.out_dir, ec).lexically_normal().string();
    if (ec) return make_error(Errc::Io, options.out_dir + ": " + ec.message());
    const std::string manifest_path = (std::filesystem::path(out_dir) / "manifest.json").string();
    auto text = read_local_file(manifest_path);
    if (!text) return make_error(text.error().code, "push: cannot read " + text.error().message);
    auto parsed = Manifest::parse(*text, manifest_path);
    if (!parsed) return std::move(parsed).error();
    Manifest manifest = std::move(*parsed);

    // Every shard must be a local file of the recorded size before anything is sent.
    std::vector<std::string> local(manifest.shards.size());
    std::uint64_t total_bytes = 0;
    for (std::size_t i = 0; i < manifest.shards.size(); ++i) {
        const ShardInfo& s = manifest.shards[i];
        if (is_url(s.location)) {
            return make_error(Errc::InvalidArgument, "push: " + manifest_path + ": shard " + s.name + " is at " +
                                                         s.location + ", not in " + out_dir +
                                                         " (push what `shelbyfs pack` wrote, without --base-url)");
        }
        local[i] = resolve_location(manifest_path, s.location);
        struct stat st {};
        if (::stat(local[i].c_str(), &st) != 0) {
            return make_error(Errc::NotFound, "push: shard " + s.name + ": " + local[i] + ": " + std::strerror(errno));
        }
        if (static_cast<std::uint64_t>(st.st_size) != s.size) {
            return make_error(Errc::InvalidArgument, "push: shard " + s.name + ": " + local[i] + " has " +
                                                         std::to_string(st.st_size) + " bytes, the manifest says " +
                                                         std::to_string(s.size) + " (re-run shelbyfs pack)");
        }
        total_bytes += s.size;
    }

    auto opened = storage.open_store(options.dest);
    if (!opened) return make_error(opened.error().code, "push: " + opened.error().message);
    ObjectStore& store = **opened;

    PushSummary summary;
    summary.shards = manifest.shards.size();
    std::mutex mutex;  // guards summary and failure
    std::optional<Error> failure;
    ProgressLine progress(progress_enabled(options.progress), "pushing", "shards", manifest.shards.size(), total_bytes);
    run_parallel(
        manifest.shards.size(), options.jobs,
        [&](std::size_t i) {
            const ShardInfo& s = manifest.shards[i];
            const std::string where = store.location(s.name);
            auto existing = store.head(s.name);
            bool upload = true;
            if (existing && *existing == s.size) {
                // Same size: compare the content too (a shard of an older pack
                // may have the same size), reading it back block by block.
                const std::string problem = check_stored_shard(storage, where, s, manifest.block_size);
                if (problem.empty()) {
                    upload = false;
                } else {
                    log::warn("push", s.name + ": " + where + " differs (" + problem + "); uploading it again");
                }
            } else if (existing) {
                log::warn("push", s.name + ": " + where + " has " + std::to_string(*existing) +
                                      " bytes, not " + std::to_string(s.size) + "; uploading it again");
            } else if (existing.error().code == Errc::HttpStatus &&
                       existing.error().message.find("HTTP 403") != std::string::npos) {
                // S3 answers a HEAD of a missing key with 403 when the credentials
                // may not list the bucket, and a HEAD carries no error code: upload,
                // and let the PUT's answer (e.g. SignatureDoesNotMatch) speak.
            } else if (existing.error().code != Errc::NotFound) {
                std::lock_guard lock(mutex);
                if (!failure) failure = make_error(existing.error().code, "push: shard " + s.name + ": " + existing.error().message);
                return;
            }
            if (upload) {
                auto put = store.put_file(s.name, local[i]);
                if (!put) {
                    std::lock_guard lock(mutex);
                    if (!failure) failure = make_error(put.error().code, "push: shard " + s.name + ": " + put.error().message);
                    return;
                }
            }
            progress.add_bytes(s.size);
            progress.add_item();
            std::lock_guard lock(mutex);
            if (upload) {
                ++summary.uploaded;
                summary.bytes_uploaded += s.size;
            } else {
                ++summary.skipped;
            }
        },
        [&] {
            std::lock_guard lock(mutex);
            return failure.has_value();
        });
    progress.finish();
    if (failure) return std::move(*failure);

    // Last: the manifest, every location absolute at the destination.
    for (ShardInfo& s : manifest.shards) s.location = store.location(s.name);
    if (auto ok = manifest.validate("the rewritten manifest"); !ok) return std::move(ok).error();
    if (auto put = store.put_bytes("manifest.json", manifest.to_json()); !put) {
        return make_error(put.error().code, "push: manifest.json: " + put.error().message);
    }
    summary.manifest_location = store.location("manifest.json");
    summary.seconds = seconds_since(start);
    return summary;
}

Result<VerifyReport> verify(Storage& storage, const VerifyOptions& options) {
    const auto start = std::chrono::steady_clock::now();
    std::string location = options.manifest;
    if (!is_url(location)) {
        std::error_code ec;
        location = std::filesystem::absolute(location, ec).lexically_normal().string();
    }
    auto text = storage.read_whole(location);
    if (!text) return make_error(text.error().code, "verify: cannot read manifest " + options.manifest + ": " + text.error().message);
    auto parsed = Manifest::parse(*text, options.manifest);
    if (!parsed) return std::move(parsed).error();
    const Manifest& manifest = *parsed;

    std::uint64_t total_bytes = 0;
    for (const ShardInfo& s : manifest.shards) total_bytes += s.size;
    VerifyReport report;
    report.shards = manifest.shards.size();
    std::vector<std::string> problems(manifest.shards.size());
    ProgressLine progress(progress_enabled(options.progress), "verifying", "shards", manifest.shards.size(), total_bytes);
    run_parallel(
        manifest.shards.size(), options.jobs,
        [&](std::size_t i) {
            const ShardInfo& s = manifest.shards[i];
            problems[i] = check_stored_shard(storage, resolve_location(location, s.location), s, manifest.block_size,
                                             &progress);
            progress.add_item();
        },
        [] { return false; });
    progress.finish();
    for (std::size_t i = 0; i < manifest.shards.size(); ++i) {
        const ShardInfo& s = manifest.shards[i];
        if (problems[i].empty()) {
            report.bytes += s.size;
        } else {
            report.problems.push_back({s.name, resolve_location(location, s.location), problems[i]});
        }
    }
    report.seconds = seconds_since(start);
    return report;
}

}  // namespace shelbyfs
