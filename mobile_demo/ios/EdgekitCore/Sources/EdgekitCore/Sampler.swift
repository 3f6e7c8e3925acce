import Foundation

/// edgekit's sampling chain (runtimes/sampling.py): penalties -> top-k -> top-p -> min-p -> temperature -> draw;
/// temperature 0 is greedy (argmax, the first of equal maxima).
public struct SamplingParams {
    public var temperature = 0.0, topK = 0, topP = 1.0, minP = 0.0, repeatPenalty = 1.0, penaltyLastN = 64
    public var seed: UInt64? = nil
    public init(temperature: Double = 0, topK: Int = 0, topP: Double = 1, minP: Double = 0, repeatPenalty: Double = 1,
                seed: UInt64? = nil) {
        self.temperature = temperature; self.topK = topK; self.topP = topP; self.minP = minP
        self.repeatPenalty = repeatPenalty; self.seed = seed
    }
    public init(_ d: SamplingDefaults) {
        self.init(temperature: d.temperature, topK: d.topK, topP: d.topP, repeatPenalty: d.repeatPenalty)
    }
}

/// SplitMix64: a small seedable generator, so a seed reproduces a run on every device.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

public final class Sampler {
    let p: SamplingParams
    var rng: SplitMix64

    public init(_ p: SamplingParams) {
        self.p = p
        rng = SplitMix64(state: p.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    public static func argmax(_ x: [Float]) -> Int {
        var best = 0
        for k in 1..<x.count where x[k] > x[best] { best = k }
        return best
    }

    public func sample(_ logits: [Float], history: [Int]) -> Int {
        var x = logits
        if p.repeatPenalty != 1, p.penaltyLastN > 0 {
            for id in Set(history.suffix(p.penaltyLastN)) where id >= 0 && id < x.count {
                x[id] = x[id] > 0 ? Float(Double(x[id]) / p.repeatPenalty) : Float(Double(x[id]) * p.repeatPenalty)
            }
        }
        if p.temperature <= 0 { return Sampler.argmax(x) }
        var order = x.indices.sorted { x[$0] > x[$1] || (x[$0] == x[$1] && $0 < $1) }
        if p.topK > 0 && p.topK < order.count { order = Array(order.prefix(p.topK)) }
        let probs = softmax(order.map { Double(x[$0]) })
        var keep = order.count
        if p.topP < 1 {
            var sum = 0.0
            for (k, q) in probs.enumerated() { sum += q; if sum >= p.topP { keep = k + 1; break } }
        }
        if p.minP > 0 {
            var k = 0
            while k < keep && probs[k] >= p.minP * probs[0] { k += 1 }
            keep = max(k, 1)
        }
        let kept = Array(order.prefix(keep))
        let tempered = softmax(kept.map { Double(x[$0]) / p.temperature })
        var r = Double.random(in: 0..<1, using: &rng)
        for (k, q) in tempered.enumerated() { r -= q; if r < 0 { return kept[k] } }
        return kept[kept.count - 1]
    }

    private func softmax(_ x: [Double]) -> [Double] {
        let m = x.max() ?? 0
        let e = x.map { Foundation.exp($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }
}

/// Streams text from ids without emitting half a character (runtimes/generate.py's prefix/read offsets).
public final class StreamDecoder {
    let tok: ByteLevelBPE
    var ids: [Int] = []
    var prefix = 0, read = 0
    public init(_ tok: ByteLevelBPE) { self.tok = tok }

    public func push(_ token: Int) -> String {
        ids.append(token)
        let before = tok.decode(Array(ids[prefix..<read]))
        let after = tok.decode(Array(ids[prefix...]))
        // counted in Unicode scalars, as Python counts code points: a Character count would merge a modifier
        // (skin tone, combining mark) into the character before it and drop it from the stream
        let b = before.unicodeScalars.count, a = after.unicodeScalars.count
        if a > b && !after.hasSuffix("\u{FFFD}") {
            prefix = read; read = ids.count
            return String(String.UnicodeScalarView(after.unicodeScalars.dropFirst(b)))
        }
        return ""
    }

    public func flush() -> String {
        let before = tok.decode(Array(ids[prefix..<read]))
        let after = tok.decode(Array(ids[prefix...]))
        prefix = ids.count; read = ids.count
        let b = before.unicodeScalars.count
        return after.unicodeScalars.count > b ? String(String.UnicodeScalarView(after.unicodeScalars.dropFirst(b))) : ""
    }
}
