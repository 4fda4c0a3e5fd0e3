// LRU block cache.
#include "shelbyfs/block_cache.h"

#include <cstring>

namespace shelbyfs {

std::size_t slices_size(const ReadSlices& slices) {
    std::size_t n = 0;
    for (const ReadSlice& s : slices) n += s.size;
    return n;
}

std::size_t copy_slices(const ReadSlices& slices, char* buffer) {
    std::size_t n = 0;
    for (const ReadSlice& s : slices) {
        std::memcpy(buffer + n, s.data, s.size);
        n += s.size;
    }
    return n;
}

BlockPtr BlockCache::get(const BlockKey& key) {
    std::lock_guard lock(mutex_);
    auto it = index_.find(key);
    if (it == index_.end()) {
        ++stats_.misses;
        return nullptr;
    }
    ++stats_.hits;
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
}

bool BlockCache::contains(const BlockKey& key) const {
    std::lock_guard lock(mutex_);
    return index_.count(key) != 0;
}

BlockPtr BlockCache::get_if_cached(const BlockKey& key) {
    std::lock_guard lock(mutex_);
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    ++stats_.hits;
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
}

void BlockCache::insert(const BlockKey& key, BlockPtr block) {
    if (!block || block->size() > budget_) return;
    std::lock_guard lock(mutex_);
    auto it = index_.find(key);
    if (it != index_.end()) {
        stats_.bytes -= it->second->second->size();
        it->second->second = std::move(block);
        stats_.bytes += it->second->second->size();
        lru_.splice(lru_.begin(), lru_, it->second);
    } else {
        stats_.bytes += block->size();
        lru_.emplace_front(key, std::move(block));
        index_.emplace(key, lru_.begin());
    }
    evict_locked();
}

void BlockCache::evict_locked() {
    while (stats_.bytes > budget_ && !lru_.empty()) {
        auto& victim = lru_.back();
        stats_.bytes -= victim.second->size();
        index_.erase(victim.first);
        lru_.pop_back();
        ++stats_.evictions;
    }
    stats_.blocks = lru_.size();
}

BlockCache::Stats BlockCache::stats() const {
    std::lock_guard lock(mutex_);
    Stats s = stats_;
    s.blocks = lru_.size();
    return s;
}

}  // namespace shelbyfs
