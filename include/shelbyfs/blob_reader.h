// BlobReader: asynchronous ranged reads of whole objects (shards), by location.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <string>

#include "shelbyfs/result.h"

namespace shelbyfs {

/// Reads byte ranges of objects named by a resolved location (a local path or
/// a URL). Implementations are thread-safe; the returned future becomes ready
/// when the range has been read in full, or with an Error after the
/// implementation's retries are exhausted. A successful result holds exactly
/// `length` bytes: short reads are errors, never silently returned.
class BlobReader {
public:
    virtual ~BlobReader() = default;
    virtual std::future<Result<std::string>> read_range(const std::string& location, std::uint64_t offset,
                                                        std::uint64_t length) = 0;
};

/// Reads local files with pread(). Thread-safe; completes synchronously.
class FileReader final : public BlobReader {
public:
    std::future<Result<std::string>> read_range(const std::string& location, std::uint64_t offset,
                                                std::uint64_t length) override;
};

/// Read a whole local file (manifests). Errors name the path.
Result<std::string> read_local_file(const std::string& path);

}  // namespace shelbyfs
