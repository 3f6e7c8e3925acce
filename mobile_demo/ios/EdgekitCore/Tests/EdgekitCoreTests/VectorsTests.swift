import Foundation
import XCTest
@testable import EdgekitCore

/// The shared vectors (mobile_demo/vectors/NAME.json, checked against transformers by
/// tests/test_package_vectors.py) against this package's tokenizer, chat format and stream decoder.
/// EDGEKIT_TOKENIZERS names a directory with NAME/tokenizer.json; edgekit-tiny's is found in the repository.
final class VectorsTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../../..").standardized

    func cases() throws -> [([String: Any], ByteLevelBPE)] {
        let dir = Self.repo.appendingPathComponent("mobile_demo/vectors")
        let files = try FileManager.default.contentsOfDirectory(at: dir, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "json" }.sorted { $0.path < $1.path }
        var out: [([String: Any], ByteLevelBPE)] = []
        for f in files {
            let v = try JSONSerialization.jsonObject(with: Data(contentsOf: f)) as! [String: Any]
            let name = f.deletingPathExtension().lastPathComponent
            var tok: URL? = nil
            if name == "edgekit-tiny" { tok = Self.repo.appendingPathComponent("edgekit/data/tiny/tokenizer.json") }
            if let env = ProcessInfo.processInfo.environment["EDGEKIT_TOKENIZERS"] {
                let u = URL(fileURLWithPath: env).appendingPathComponent("\(name)/tokenizer.json")
                if FileManager.default.fileExists(atPath: u.path) { tok = u }
            }
            guard let t = tok else { print("skip \(name): no tokenizer.json"); continue }
            out.append((v, try ByteLevelBPE(data: Data(contentsOf: t))))
        }
        XCTAssertFalse(out.isEmpty)
        return out
    }

    func bundle(_ v: [String: Any]) throws -> EdgekitBundle {
        var b = v["bundle"] as! [String: Any]
        b["schema_version"] = 1
        b["platform"] = "ios"
        return try EdgekitBundle.parse(JSONSerialization.data(withJSONObject: b), directory: nil)
    }

    func testEncode() throws {
        for (v, tok) in try cases() {
            let b = try bundle(v)
            for p in v["encode"] as! [[String: Any]] {
                let text = p["text"] as! String
                XCTAssertEqual(tok.encode(text), p["ids"] as! [Int], "\(v["model"]!) \(p["name"]!)")
                XCTAssertEqual(b.encodePlain(tok, text), p["ids_with_special"] as! [Int], "\(p["name"]!)")
            }
        }
    }

    func testDecode() throws {
        for (v, tok) in try cases() {
            for p in v["decode"] as! [[String: Any]] {
                XCTAssertEqual(tok.decode(p["ids"] as! [Int]), p["text"] as! String, "\(p["name"]!)")
            }
        }
    }

    func testChat() throws {
        for (v, tok) in try cases() {
            let b = try bundle(v)
            for c in v["chat"] as! [[String: Any]] {
                let messages = (c["messages"] as! [[String: String]]).map { Message(role: $0["role"]!, content: $0["content"]!) }
                XCTAssertEqual(b.chat?.render(messages, addGenerationPrompt: true), c["prompt"] as? String)
                XCTAssertEqual(try b.encodeChat(tok, messages), c["ids"] as! [Int])
            }
        }
    }

    func testGreedyTextAndStreaming() throws {
        for (v, tok) in try cases() {
            for r in v["greedy"] as! [[String: Any]] {
                let tokens = r["tokens"] as! [Int]
                XCTAssertEqual(tok.decode(tokens), r["text"] as! String)
                let s = StreamDecoder(tok)
                var text = tokens.map { s.push($0) }.joined()
                text += s.flush()
                XCTAssertEqual(text, r["text"] as! String)
            }
        }
    }

    func testNewerSchemaRefused() {
        XCTAssertThrowsError(try EdgekitBundle.parse(Data("{\"schema_version\": 2}".utf8), directory: nil))
    }

    func testSamplerGreedyAndSoftmax() {
        XCTAssertEqual(Sampler(SamplingParams()).sample([0, 1, 3, 3, -1], history: []), 2)
        let s = Sampler(SamplingParams(temperature: 1, seed: 1234))
        var ones = 0
        for _ in 0..<20000 where s.sample([0, Float(log(3.0))], history: []) == 1 { ones += 1 }
        XCTAssertEqual(Double(ones) / 20000, 0.75, accuracy: 0.015)
    }
}
