import Foundation

/// A bundle.json problem, shown to the user as one line (what is wrong; what to do).
public struct BundleError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public struct Message {
    public let role: String
    public let content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
}

public struct SamplingDefaults {
    public let temperature: Double
    public let topK: Int
    public let topP: Double
    public let repeatPenalty: Double
    public let maxNewTokens: Int
}

/// bundle.json as the app reads it: the facts the Python reference loop (edgekit/package/reference.py) reads.
public final class EdgekitBundle {
    public static let schemaVersion = 1
    public let json: [String: Any]
    public let directory: URL?
    public let platform: String
    public let contextLength: Int
    public let tokenizerFile: String
    public let tokenizerKind: String
    public let addPrefix: [Int]
    public let addSuffix: [Int]
    public let bos: Int?
    public let eos: Set<Int>
    public let chat: ChatFormat?
    public let sampling: SamplingDefaults

    public static func load(_ directory: URL) throws -> EdgekitBundle {
        let file = directory.appendingPathComponent("bundle.json")
        guard let data = try? Data(contentsOf: file) else {
            throw BundleError("\(directory.path) has no bundle.json; copy in the output of edgekit package")
        }
        return try parse(data, directory: directory)
    }

    public static func parse(_ data: Data, directory: URL?) throws -> EdgekitBundle {
        guard let json = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw BundleError("bundle.json is not a JSON object; re-create it with edgekit package")
        }
        guard let version = json["schema_version"] as? Int else {
            throw BundleError("bundle.json has no schema_version; re-create it with edgekit package")
        }
        if version > schemaVersion {
            throw BundleError("bundle.json has schema version \(version), newer than the \(schemaVersion) this app reads; update the app")
        }
        return try EdgekitBundle(json: json, directory: directory)
    }

    init(json: [String: Any], directory: URL?) throws {
        func obj(_ o: [String: Any], _ k: String) throws -> [String: Any] {
            guard let v = o[k] as? [String: Any] else { throw BundleError("bundle.json has no \(k)") }
            return v
        }
        self.json = json
        self.directory = directory
        platform = json["platform"] as? String ?? ""
        contextLength = json["context_length"] as? Int ?? 0
        let tok = try obj(json, "tokenizer")
        tokenizerFile = tok["file"] as? String ?? "tokenizer.json"
        tokenizerKind = tok["kind"] as? String ?? "other"
        let add = try obj(tok, "add_special")
        addPrefix = add["prefix"] as? [Int] ?? []
        addSuffix = add["suffix"] as? [Int] ?? []
        let special = try obj(json, "special_ids")
        bos = special["bos"] as? Int
        eos = Set(special["eos"] as? [Int] ?? [])
        let chatJson = try obj(json, "chat")
        chat = (chatJson["format"] as? [String: Any]).map { ChatFormat(json: $0) }
        let s = try obj(json, "sampling")
        sampling = SamplingDefaults(temperature: (s["temperature"] as? NSNumber)?.doubleValue ?? 0,
                                    topK: s["top_k"] as? Int ?? 0, topP: (s["top_p"] as? NSNumber)?.doubleValue ?? 1,
                                    repeatPenalty: (s["repeat_penalty"] as? NSNumber)?.doubleValue ?? 1,
                                    maxNewTokens: s["max_new_tokens"] as? Int ?? 256)
    }

    public func tokenizer() throws -> ByteLevelBPE {
        guard tokenizerKind == "byte_level_bpe" else {
            throw BundleError("the bundle's tokenizer is \(tokenizerKind), not byte-level BPE; this app cannot run it")
        }
        guard let dir = directory else { throw BundleError("no bundle directory") }
        return try ByteLevelBPE(data: Data(contentsOf: dir.appendingPathComponent(tokenizerFile)))
    }

    /// A plain (non-chat) prompt: the text's ids between the ids the tokenizer adds.
    public func encodePlain(_ tok: ByteLevelBPE, _ text: String) -> [Int] { addPrefix + tok.encode(text) + addSuffix }

    /// A chat: the bundle's chat format rendered, then tokenized with nothing added.
    public func encodeChat(_ tok: ByteLevelBPE, _ messages: [Message]) throws -> [Int] {
        guard let chat = chat else { throw BundleError("the bundle has no usable chat format; use plain completion") }
        return tok.encode(chat.render(messages, addGenerationPrompt: true))
    }
}

/// The chat template reduced to fixed strings by edgekit package (bundle.json chat.format).
public struct ChatFormat {
    public let prefix: String
    public let roles: [String: (before: String, after: String)]
    public let generationPrompt: String
    public let defaultSystem: String?

    init(json: [String: Any]) {
        prefix = json["prefix"] as? String ?? ""
        var r: [String: (before: String, after: String)] = [:]
        for (k, v) in json["roles"] as? [String: [String: String]] ?? [:] {
            r[k] = (v["before"] ?? "", v["after"] ?? "")
        }
        roles = r
        generationPrompt = json["generation_prompt"] as? String ?? ""
        defaultSystem = json["default_system"] as? String
    }

    public func render(_ messages: [Message], addGenerationPrompt: Bool) -> String {
        var out = prefix
        if let d = defaultSystem, messages.first?.role != "system", let sys = roles["system"] {
            out += sys.before + d + sys.after
        }
        for m in messages {
            let r = roles[m.role] ?? (before: "", after: "")
            out += r.before + m.content + r.after
        }
        if addGenerationPrompt { out += generationPrompt }
        return out
    }
}
