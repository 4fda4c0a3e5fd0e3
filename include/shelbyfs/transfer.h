// `shelbyfs push` and `shelbyfs verify`: move a packed dataset to a store, and
// check a manifest's shards where they are.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shelbyfs/manifest.h"
#include "shelbyfs/progress.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

class Storage;

struct PushOptions {
    std::string out_dir;  ///< what `shelbyfs pack` wrote: manifest.json and the shards
    std::string dest;     ///< a directory, http(s) WebDAV URL, s3://bucket/prefix/, shelby://account/prefix/
    int jobs = 4;         ///< shards in flight (each S3 upload also sends parts in parallel)
    Progress progress = Progress::Auto;
};

struct PushSummary {
    std::uint64_t shards = 0;
    std::uint64_t uploaded = 0;  ///< shards sent
    std::uint64_t skipped = 0;   ///< shards already there with the right size and hash
    std::uint64_t bytes_uploaded = 0;
    double seconds = 0;
    std::string manifest_location;  ///< where the rewritten manifest went
};

/// Upload every shard of out_dir/manifest.json to `dest` under its shard
/// name, skipping objects already there with the right size and content
/// (read back and checked against the manifest's block hashes), then upload
/// dest/manifest.json with every location rewritten to its absolute place
/// under `dest`. The manifest goes last, so it never names a missing shard;
/// every object put is atomic, so a push that was interrupted can simply be
/// run again. Errors name the shard and the cause.
Result<PushSummary> push(Storage& storage, const PushOptions& options);

struct VerifyOptions {
    std::string manifest;  ///< path or URL
    int jobs = 4;          ///< shards checked at once
    Progress progress = Progress::Auto;
};

struct VerifyProblem {
    std::string shard;     ///< its name
    std::string location;  ///< resolved
    std::string what;      ///< "missing (HTTP 404)", "size 123, manifest says 456", "block 3 ... hash mismatch"
};

struct VerifyReport {
    std::uint64_t shards = 0;
    std::uint64_t bytes = 0;  ///< read and checked
    std::vector<VerifyProblem> problems;  ///< in shard order
    double seconds = 0;
};

/// Read every shard of the manifest at its location and check its size, every
/// block hash and the whole-shard hash. Fails only if the manifest cannot be
/// loaded or parsed (which also checks that sample ranges lie inside their
/// shards); damaged or missing shards are reported in VerifyReport::problems.
Result<VerifyReport> verify(Storage& storage, const VerifyOptions& options);

/// "" if the object at `location` holds exactly the bytes `shard` describes,
/// else what is wrong with it. Reads it in block_size ranges, 8 at a time.
/// `progress`, if set, gets the bytes checked.
std::string check_stored_shard(Storage& storage, const std::string& location, const ShardInfo& shard,
                               std::uint64_t block_size, ProgressLine* progress = nullptr);

}  // namespace shelbyfs
