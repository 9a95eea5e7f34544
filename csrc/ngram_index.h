// Hashed word n-gram index for benchmark decontamination.
//
// Words and segments follow data_pipeline/decont_text.py: the caller passes NFKC-lowercased
// UTF-8 text plus a code-point class table (0 separator, 1 word character, 2 CJK character
// that is a word by itself), so the Python module stays the one definition of a "word".
// Keys are 64-bit hashes of (word sequence, length); a 64-bit collision between a benchmark
// n-gram and a corpus n-gram is the only way this index can differ from the exact
// plain-Python reference (data_pipeline/ngram_ref.py).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsm {

// One contaminated segment of a document: the first match (in scan order) that covers it.
struct SegmentMatch {
    int32_t segment;       // line index in the document
    std::string ngram;     // the matching normalised words, joined by single spaces
    uint32_t benchmarks;   // bit b set: benchmark b holds this n-gram
};

// Open-addressing hash set of 64-bit keys with a 32-bit benchmark mask per key, plus a
// small bit filter that answers most misses without touching the (larger) table.
class HashedNGramTable {
public:
    HashedNGramTable();
    // ORs `mask` into the key's value; returns true when the key is new.
    bool insert(uint64_t key, uint32_t mask);
    // 0 when absent.
    uint32_t find(uint64_t key) const;
    // Starts loading the filter word `find(key)` will read (the scan is memory-latency bound).
    void prefetch(uint64_t key) const {
        const uint64_t bit = key >> (64 - filter_bits_log2_);
        __builtin_prefetch(&filter_[bit >> 6]);
    }
    size_t size() const { return size_; }
    size_t capacity() const { return keys_.size(); }

private:
    void grow();
    void rebuild_filter();
    std::vector<uint64_t> keys_;  // 0 marks an empty slot; keys are never 0
    std::vector<uint32_t> masks_;
    std::vector<uint64_t> filter_;  // one bit per (key >> shift) bucket
    size_t size_ = 0;
    int filter_bits_log2_ = 16;
};

class NGramIndex {
public:
    // `char_classes` has one byte per Unicode code point (0x110000 bytes).
    NGramIndex(const std::string& char_classes, int n, int min_short);

    // Indexes one normalised benchmark text: all n-grams when it has >= n words, the whole
    // word sequence when it has min_short..n-1 words, nothing otherwise. Returns the word count.
    int add(const std::string& normalized, int benchmark_id);

    // Contaminated segments of each normalised document (segments are '\n'-separated lines;
    // n-grams run across lines), sorted by segment index.
    std::vector<std::vector<SegmentMatch>> query(const std::vector<std::string>& docs) const;

    size_t num_keys() const { return long_.size() + short_.size(); }
    int n() const { return n_; }
    int min_short() const { return min_short_; }
    // Lengths with at least one indexed key, longest first (what a query checks).
    std::vector<int> lengths() const;

private:
    struct Word {
        uint32_t begin, end;  // byte range in the normalised text
        int32_t segment;
        uint64_t hash;
    };
    void split_words(const std::string& text, std::vector<Word>& out) const;
    void query_one(const std::string& text, std::vector<Word>& words,
                   std::vector<SegmentMatch>& out) const;

    std::vector<uint8_t> classes_;
    int n_;
    int min_short_;
    bool has_length_[64] = {};
    // n-grams of long texts, and the few whole short texts apart: the short table stays
    // cache-resident, so checking the 3..n-1 lengths at every position costs no memory trips.
    HashedNGramTable long_;
    HashedNGramTable short_;
    // bit (hash & 4095) set for the first word of every short text: most positions skip the
    // short lengths after one test
    uint64_t short_first_[64] = {};
};

}  // namespace dsm
