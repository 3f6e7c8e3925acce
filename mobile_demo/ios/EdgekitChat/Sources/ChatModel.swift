import EdgekitCore
import Foundation

/// One chat over the bundle in Documents/bundle: the bundle's tokenizer and chat format, its stateful Core ML
/// package, the KV cache kept across turns (the longest common prefix of the re-rendered history).
@MainActor
final class ChatModel: ObservableObject {
    @Published var transcript = ""
    @Published var status = "no bundle"
    @Published var busy = false
    @Published var useAccelerators = true

    private var bundle: EdgekitBundle?
    private var tokenizer: ByteLevelBPE?
    private var decoder: CoreMLDecoder?
    private var messages: [Message] = []
    private var cached: [Int] = []

    static var bundleURL: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0].appendingPathComponent("bundle")
    }

    func load() {
        busy = true
        let url = Self.bundleURL
        let accelerate = useAccelerators
        Task.detached {
            do {
                let b = try EdgekitBundle.load(url)
                let t = try b.tokenizer()
                let d = try CoreMLDecoder(bundle: b, preferAccelerators: accelerate)
                let name = (b.json["model"] as? [String: Any])?["name"] as? String ?? "model"
                await MainActor.run {
                    self.bundle = b; self.tokenizer = t; self.decoder = d; self.cached = []; self.messages = []
                    self.status = "\(name) · compute units \(d.computeUnits)"
                    self.busy = false
                }
            } catch {
                await MainActor.run { self.status = "cannot load \(url.path): \(error)"; self.busy = false }
            }
        }
    }

    func send(_ text: String) {
        guard let b = bundle, let t = tokenizer, let d = decoder, !busy else { return }
        busy = true
        messages.append(Message(role: "user", content: text))
        transcript += "\n> \(text)\n"
        let history = messages
        let cachedNow = cached
        Task.detached {
            do {
                let prompt = try b.encodeChat(t, history)
                var common = 0
                while common < cachedNow.count && common < prompt.count - 1 && cachedNow[common] == prompt[common] { common += 1 }
                d.truncate(common)
                let stream = StreamDecoder(t)
                var answer = ""
                let tokens = try d.generate(Array(prompt[d.position...]), sampler: Sampler(SamplingParams(b.sampling)),
                                            maxTokens: b.sampling.maxNewTokens, eos: b.eos, context: b.contextLength) { token in
                    let piece = stream.push(token)
                    if !piece.isEmpty { answer += piece; Task { @MainActor in self.transcript += piece } }
                    return true
                }
                let tail = stream.flush()
                answer += tail
                let all = prompt + tokens
                let position = d.position
                await MainActor.run {
                    self.transcript += tail + "\n"
                    self.cached = Array(all.prefix(position))  // the last sampled token was never fed
                    self.messages.append(Message(role: "assistant", content: answer))
                    self.busy = false
                }
            } catch {
                await MainActor.run { self.transcript += "\n[error: \(error)]\n"; self.busy = false }
            }
        }
    }
}
