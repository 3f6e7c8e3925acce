#if canImport(CoreML)
import CoreML
import Foundation

/// The bundle's stateful Core ML package: the model keeps its KV cache in MLState; a call takes 1..context new
/// tokens at `position` (tokens already cached) and returns the last token's logits (bundle.json runtime).
@available(iOS 18.0, macOS 15.0, *)
public final class CoreMLDecoder {
    let model: MLModel
    var state: MLState
    let inputIds: String, positionName: String, logitsName: String
    public private(set) var position = 0
    public let computeUnits: String

    public init(bundle: EdgekitBundle, preferAccelerators: Bool = true) throws {
        guard let dir = bundle.directory, let rt = bundle.json["runtime"] as? [String: Any],
              rt["engine"] as? String == "coreml", let package = rt["package"] as? String,
              let inputs = rt["inputs"] as? [String: [String: Any]], let outputs = rt["outputs"] as? [String: [String: Any]]
        else { throw BundleError("this is not an iOS bundle; write one with edgekit package --platform ios") }
        inputIds = inputs["input_ids"]?["name"] as? String ?? "input_ids"
        positionName = inputs["position"]?["name"] as? String ?? "position"
        logitsName = outputs["logits"]?["name"] as? String ?? "logits"
        let compiled = try MLModel.compileModel(at: dir.appendingPathComponent(package))
        let config = MLModelConfiguration()
        // bundle.json compute_units: preferred "all", fallback "cpuOnly"
        config.computeUnits = preferAccelerators ? .all : .cpuOnly
        do {
            model = try MLModel(contentsOf: compiled, configuration: config)
            computeUnits = preferAccelerators ? "all" : "cpuOnly"
        } catch {
            config.computeUnits = .cpuOnly
            model = try MLModel(contentsOf: compiled, configuration: config)
            computeUnits = "cpuOnly (fallback: \(error.localizedDescription))"
        }
        state = model.makeState()
    }

    public func reset() { state = model.makeState(); position = 0 }

    /// Rewind to `n` cached tokens: entries past it are overwritten before they are read.
    public func truncate(_ n: Int) { position = min(position, n) }

    public func forward(_ tokens: [Int]) throws -> [Float] {
        let ids = try MLMultiArray(shape: [1, NSNumber(value: tokens.count)], dataType: .int32)
        for (k, t) in tokens.enumerated() { ids[[0, NSNumber(value: k)]] = NSNumber(value: t) }
        let pos = try MLMultiArray(shape: [1], dataType: .int32)
        pos[0] = NSNumber(value: position)
        let input = try MLDictionaryFeatureProvider(dictionary: [inputIds: ids, positionName: pos])
        let out = try model.prediction(from: input, using: state)
        position += tokens.count
        guard let logits = out.featureValue(for: logitsName)?.multiArrayValue else { throw BundleError("no logits output") }
        var result = [Float](repeating: 0, count: logits.count)
        for k in 0..<logits.count { result[k] = logits[k].floatValue }
        return result
    }

    /// Prefill, then sample until an end id, `maxTokens`, a full context, or `onToken` returns false.
    public func generate(_ prompt: [Int], sampler: Sampler, maxTokens: Int, eos: Set<Int>, context: Int,
                         onToken: (Int) -> Bool = { _ in true }) throws -> [Int] {
        var history = prompt
        var out: [Int] = []
        var logits = try forward(prompt)
        while out.count < maxTokens {
            let token = sampler.sample(logits, history: history)
            if eos.contains(token) { break }
            out.append(token); history.append(token)
            if !onToken(token) || out.count >= maxTokens || position >= context { break }
            logits = try forward([token])
        }
        return out
    }
}
#endif
