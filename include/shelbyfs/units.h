// Parsing and printing byte sizes ("64MiB", "1G") and durations.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace shelbyfs {

/// Parse a size: digits with an optional suffix K, KiB, M, MiB, G, GiB, T, TiB
/// (case-insensitive; all binary, so 1K == 1KiB == 1024) or B. nullopt if malformed
/// or if it overflows 64 bits.
std::optional<std::uint64_t> parse_size(std::string_view text);
/// "1.5 MiB", "12 B": for progress lines and messages.
std::string format_size(std::uint64_t bytes);

}  // namespace shelbyfs
