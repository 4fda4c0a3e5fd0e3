// XXH3-128 content hashes: one-shot, streaming, and the hex form xxhsum -H2 prints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace shelbyfs {

/// A 128-bit XXH3 hash. hex() is the canonical big-endian form, 32 lowercase
/// hex digits, byte-for-byte what `xxhsum -H2` prints.
struct ContentHash {
    std::uint64_t high = 0;
    std::uint64_t low = 0;

    std::string hex() const;
    /// Parse 32 hex digits (either case). nullopt on anything else.
    static std::optional<ContentHash> from_hex(std::string_view text);
    /// One-shot hash of a buffer.
    static ContentHash of(const void* data, std::size_t size);
    static ContentHash of(std::string_view bytes) { return of(bytes.data(), bytes.size()); }

    friend bool operator==(const ContentHash&, const ContentHash&) = default;
};

/// Streaming XXH3-128. Reentrant (one instance per thread).
class Hasher {
public:
    Hasher();
    ~Hasher();
    Hasher(const Hasher&) = delete;
    Hasher& operator=(const Hasher&) = delete;
    void update(const void* data, std::size_t size);
    ContentHash digest() const;
    void reset();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace shelbyfs
