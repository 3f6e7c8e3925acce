import Foundation
import XCTest
@testable import EdgekitCore

/// On macOS 15 (the ios workflow): the app's Core ML loop on an iOS bundle reproduces the greedy self-test that
/// edgekit recorded when it packaged the bundle on macOS (edgekit's runtime on the same package).
/// EDGEKIT_IOS_BUNDLE names the bundle directory; without it the test is skipped.
final class CoreMLTests: XCTestCase {
    func testSelftest() throws {
        guard let path = ProcessInfo.processInfo.environment["EDGEKIT_IOS_BUNDLE"] else {
            throw XCTSkip("EDGEKIT_IOS_BUNDLE is not set")
        }
        #if canImport(CoreML)
        guard #available(macOS 15.0, iOS 18.0, *) else { throw XCTSkip("MLState needs macOS 15 / iOS 18") }
        let bundle = try EdgekitBundle.load(URL(fileURLWithPath: path))
        let test = try XCTUnwrap(bundle.json["selftest"] as? [String: Any], "the bundle records no self-test")
        let tok = try bundle.tokenizer()
        let prompt = test["prompt"] as! String
        let ids = (test["chat"] as! Bool) ? try bundle.encodeChat(tok, [Message(role: "user", content: prompt)])
                                           : bundle.encodePlain(tok, prompt)
        XCTAssertEqual(ids, test["prompt_ids"] as! [Int])
        let want = test["greedy_ids"] as! [Int]
        let decoder = try CoreMLDecoder(bundle: bundle, preferAccelerators: false)
        let got = try decoder.generate(ids, sampler: Sampler(SamplingParams()), maxTokens: want.count, eos: bundle.eos,
                                       context: bundle.contextLength)
        XCTAssertEqual(got, want)
        #endif
    }
}
