// swift-tools-version:5.9
// The iOS demo's logic (tokenizer, chat format, sampler, stream decoder, Core ML KV loop) as a plain Swift
// package, tested with `swift test` over mobile_demo/vectors without a device or simulator.
import PackageDescription

let package = Package(
    name: "EdgekitCore",
    platforms: [.iOS(.v18), .macOS(.v15)],  // MLState (the stateful KV cache) needs iOS 18 / macOS 15
    products: [.library(name: "EdgekitCore", targets: ["EdgekitCore"])],
    targets: [
        .target(name: "EdgekitCore"),
        .testTarget(name: "EdgekitCoreTests", dependencies: ["EdgekitCore"]),
    ]
)
