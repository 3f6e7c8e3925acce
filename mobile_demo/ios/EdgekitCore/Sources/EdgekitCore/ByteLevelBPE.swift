import Foundation

/// Byte-level BPE over a Hugging Face tokenizer.json, as the Kotlin library does it
/// (mobile_demo/android/edgekit-core): added tokens first (leftmost, longest), optional NFC, pre-tokenizers
/// ByteLevel / Digits / Split (isolated regex), BPE merges by rank, ByteLevel decoder. Hand-written: no Swift
/// library reads tokenizer.json without pulling in a model hub client; checked against mobile_demo/vectors.
public final class ByteLevelBPE {
    struct Added { let content: String; let id: Int; let special: Bool }
    enum Step { case byteLevel(prefixSpace: Bool, useRegex: Bool), digits(individual: Bool), split(NSRegularExpression) }

    private var vocab: [String: Int] = [:]
    private var ranks: [String: Int] = [:]
    private var added: [Added] = []
    private var addedById: [Int: Added] = [:]
    private var idToToken: [Int: String] = [:]
    private var steps: [Step] = []
    private var nfc = false
    private var ignoreMerges = false
    private var cache: [String: [Int]] = [:]

    static let gpt2 = try! NSRegularExpression(
        pattern: "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+")
    static let byteToChar: [Character] = {
        var direct = Set<Int>()
        for b in 0x21...0x7E { direct.insert(b) }
        for b in 0xA1...0xAC { direct.insert(b) }
        for b in 0xAE...0xFF { direct.insert(b) }
        var table = [Character](repeating: " ", count: 256)
        var n = 0
        for b in 0..<256 {
            if direct.contains(b) { table[b] = Character(Unicode.Scalar(UInt32(b))!) }
            else { table[b] = Character(Unicode.Scalar(UInt32(256 + n))!); n += 1 }
        }
        return table
    }()
    static let charToByte: [Character: UInt8] = {
        var m: [Character: UInt8] = [:]
        for b in 0..<256 { m[byteToChar[b]] = UInt8(b) }
        return m
    }()

    public init(data: Data) throws {
        guard let tj = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let model = tj["model"] as? [String: Any], model["type"] as? String == "BPE",
              let v = model["vocab"] as? [String: Int] else { throw BundleError("tokenizer.json is not a BPE model") }
        vocab = v
        for (k, id) in v { idToToken[id] = k }
        for (r, m) in (model["merges"] as? [Any] ?? []).enumerated() {
            let key: String
            if let pair = m as? [String], pair.count == 2 { key = pair[0] + "\u{0}" + pair[1] }
            else if let s = m as? String, let sp = s.firstIndex(of: " ") {
                key = String(s[..<sp]) + "\u{0}" + String(s[s.index(after: sp)...])
            } else { continue }
            if ranks[key] == nil { ranks[key] = r }
        }
        for a in tj["added_tokens"] as? [[String: Any]] ?? [] {
            let t = Added(content: a["content"] as? String ?? "", id: a["id"] as? Int ?? -1, special: a["special"] as? Bool ?? false)
            added.append(t); addedById[t.id] = t; idToToken[t.id] = t.content
        }
        if let norm = tj["normalizer"] as? [String: Any] {
            guard norm["type"] as? String == "NFC" else { throw BundleError("tokenizer.json normalizer is not supported") }
            nfc = true
        }
        ignoreMerges = model["ignore_merges"] as? Bool ?? false
        if let pre = tj["pre_tokenizer"] as? [String: Any] {
            let list = pre["type"] as? String == "Sequence" ? (pre["pretokenizers"] as? [[String: Any]] ?? []) : [pre]
            for p in list {
                switch p["type"] as? String {
                case "ByteLevel": steps.append(.byteLevel(prefixSpace: p["add_prefix_space"] as? Bool ?? false, useRegex: p["use_regex"] as? Bool ?? true))
                case "Digits": steps.append(.digits(individual: p["individual_digits"] as? Bool ?? false))
                case "Split":
                    guard let pattern = (p["pattern"] as? [String: String])?["Regex"], p["behavior"] as? String == "Isolated",
                          !(p["invert"] as? Bool ?? false) else { throw BundleError("tokenizer.json Split other than an isolated regex") }
                    steps.append(.split(try NSRegularExpression(pattern: pattern)))
                default: throw BundleError("tokenizer.json pre-tokenizer \(p["type"] ?? "?") is not supported")
                }
            }
        }
    }

    public func encode(_ text: String) -> [Int] {
        var out: [Int] = []
        let scalars = Array(text.unicodeScalars)
        var segment = String.UnicodeScalarView()
        var i = 0
        while i < scalars.count {
            var best: Added? = nil
            for a in added where !a.content.isEmpty {
                let s = Array(a.content.unicodeScalars)
                if i + s.count <= scalars.count && Array(scalars[i..<(i + s.count)]) == s && s.count > (best.map { $0.content.unicodeScalars.count } ?? 0) {
                    best = a
                }
            }
            if let b = best {
                if !segment.isEmpty { encodeSegment(String(segment), &out); segment = String.UnicodeScalarView() }
                out.append(b.id)
                i += b.content.unicodeScalars.count
            } else { segment.append(scalars[i]); i += 1 }
        }
        if !segment.isEmpty { encodeSegment(String(segment), &out) }
        return out
    }

    public func decode(_ ids: [Int], skipSpecial: Bool = true) -> String {
        var bytes: [UInt8] = []
        for id in ids {
            if let a = addedById[id], a.special, skipSpecial { continue }
            guard let token = idToToken[id] else { continue }
            var buf: [UInt8] = []
            var all = true
            for c in token { if let b = ByteLevelBPE.charToByte[c] { buf.append(b) } else { all = false; break } }
            bytes += all ? buf : Array(token.utf8)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func encodeSegment(_ segment: String, _ out: inout [Int]) {
        var pieces = [nfc ? segment.precomposedStringWithCanonicalMapping : segment]
        for step in steps {
            var next: [String] = []
            for p in pieces {
                switch step {
                case let .split(re): next += isolate(p, re)
                case let .digits(individual): next += digits(p, individual)
                case let .byteLevel(prefixSpace, useRegex):
                    let t = prefixSpace && !p.hasPrefix(" ") ? " " + p : p
                    for part in useRegex ? isolate(t, ByteLevelBPE.gpt2) : [t] {
                        next.append(String(part.utf8.map { ByteLevelBPE.byteToChar[Int($0)] }))
                    }
                }
            }
            pieces = next
        }
        for p in pieces { out += bpe(p) }
    }

    private func isolate(_ s: String, _ re: NSRegularExpression) -> [String] {
        let ns = s as NSString
        var out: [String] = []
        var last = 0
        for m in re.matches(in: s, range: NSRange(location: 0, length: ns.length)) where m.range.length > 0 {
            if m.range.location > last { out.append(ns.substring(with: NSRange(location: last, length: m.range.location - last))) }
            out.append(ns.substring(with: m.range))
            last = m.range.location + m.range.length
        }
        if last < ns.length { out.append(ns.substring(from: last)) }
        return out
    }

    private func digits(_ s: String, _ individual: Bool) -> [String] {
        var out: [String] = []
        var cur = String.UnicodeScalarView()
        var inDigits = false
        for u in s.unicodeScalars {
            let d = u.properties.numericType != nil
            if !cur.isEmpty && (d != inDigits || (d && individual)) { out.append(String(cur)); cur = String.UnicodeScalarView() }
            cur.append(u)
            inDigits = d
        }
        if !cur.isEmpty { out.append(String(cur)) }
        return out
    }

    private func bpe(_ word: String) -> [Int] {
        if let c = cache[word] { return c }
        if ignoreMerges, let w = vocab[word] { return [w] }
        var symbols = word.map { String($0) }
        while symbols.count > 1 {
            var bestRank = Int.max
            var bestPair: String? = nil
            for k in 0..<(symbols.count - 1) {
                if let r = ranks[symbols[k] + "\u{0}" + symbols[k + 1]], r < bestRank { bestRank = r; bestPair = symbols[k] + "\u{0}" + symbols[k + 1] }
            }
            guard let pair = bestPair else { break }
            var merged: [String] = []
            var k = 0
            while k < symbols.count {
                if k < symbols.count - 1 && symbols[k] + "\u{0}" + symbols[k + 1] == pair { merged.append(symbols[k] + symbols[k + 1]); k += 2 }
                else { merged.append(symbols[k]); k += 1 }
            }
            symbols = merged
        }
        let ids = symbols.compactMap { vocab[$0] }
        cache[word] = ids
        return ids
    }
}
