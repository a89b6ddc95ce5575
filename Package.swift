// swift-tools-version:6.1
import PackageDescription

/// The C kernels are bit-exact only without FMA contraction (see Sources/CMoEKernels/moe_token.h).
let kernelFlags: [CSetting] = [.unsafeFlags(["-ffp-contract=off", "-O3"])]

let package = Package(
    name: "moe-router",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MoERouting", targets: ["MoERouting"]),
        .executable(name: "moe-route-eval", targets: ["moe-route-eval"]),
        .executable(name: "moe-router-kernel-bench", targets: ["moe-router-kernel-bench"]),
        .executable(name: "moe-routerd", targets: ["moe-routerd"]),
        .executable(name: "moe-router-latency-bench", targets: ["moe-router-latency-bench"]),
        .executable(name: "moe-router-bench", targets: ["moe-router-bench"]),
        .executable(name: "moe-routerctl", targets: ["moe-routerctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        .package(url: "https://github.com/weichsel/ZIPFoundation", from: "0.9.19"),
    ],
    targets: [
        .systemLibrary(name: "CZMQ", path: "Sources/CZMQ"),
        .target(name: "CMoEKernels", cSettings: kernelFlags),
        .target(name: "MoERouting", dependencies: ["CMoEKernels"]),
        .target(
            name: "MoERouterService",
            dependencies: [
                "CMoERouterdOS",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        .executableTarget(
            name: "moe-router-fuzz",
            dependencies: ["MoERouterServer", "MoERouterModels"],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(
            name: "moe-route-eval",
            dependencies: ["MoERouting", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "moe-router-kernel-bench",
            dependencies: ["MoERouting", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .testTarget(name: "MoERoutingTests", dependencies: ["MoERouting", "CMoEKernels"]),
        // Hugging Face checkpoints: safetensors headers and the few tensors the layers need.
        .target(name: "MoERouterModels", dependencies: ["MoERouting"]),
        .testTarget(name: "MoERouterModelsTests", dependencies: ["MoERouterModels", "MoERouting"]),

        // moe-routerd: the wire protocol is Include/moe_router.h, imported through CMoERouterWire
        // (its include/ is a symlink to ../../Include).
        .target(name: "CMoERouterWire"),
        // The daemon's one C shim: SIGBUS guard, shm, threads, sd_notify, libbsd pidfile/proctitle.
        .target(name: "CMoERouterdOS", linkerSettings: [.linkedLibrary("bsd")]),
        // libzmq for Swift: context, socket, message (one owner each).
        .target(name: "MoERouterZMQ", dependencies: ["CZMQ"]),
        // The benches' bare-ZeroMQ baseline (one echo server for both).
        .target(name: "MoERouterEcho", dependencies: ["CZMQ", "CMoERouterdOS"]),
        // The plain-C client library (also built without Swift by the top-level Makefile).
        .target(name: "CMoERouterClient", dependencies: ["CMoERouterWire"], path: "clients/c",
                linkerSettings: [.linkedLibrary("zmq")]),
        .target(
            name: "MoERouterServer",
            dependencies: ["MoERouting", "MoERouterModels", "CMoERouterWire", "CMoERouterdOS", "CZMQ", "MoERouterZMQ",
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "Metrics", package: "swift-metrics"),
                           .product(name: "Yams", package: "Yams")]),
        .executableTarget(
            name: "moe-routerd",
            dependencies: ["MoERouterServer", "MoERouting", "MoERouterService", "MoERouterModels",
                           .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "Metrics", package: "swift-metrics"),
                           .product(name: "Prometheus", package: "swift-prometheus")],
            // main.swift holds the @main type next to other files.
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(
            name: "moe-router-latency-bench",
            dependencies: ["MoERouting", "CMoERouterWire", "CMoERouterClient", "CZMQ", "CMoERouterdOS", "MoERouterEcho",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .testTarget(
            name: "MoERouterServerTests",
            dependencies: ["MoERouterServer", "MoERouting", "CMoERouterWire", "CMoERouterClient",
                           "CMoERouterdOS", "CZMQ", "MoERouterZMQ"]),
        .testTarget(name: "MoERouterServiceTests", dependencies: ["MoERouterService"]),
        .executableTarget(
            name: "moe-router-bench",
            dependencies: ["MoERouting", "MoERouterZMQ", "MoERouterEcho", "CMoERouterClient", "CMoERouterWire", "CZMQ",
                           .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Histogram", package: "hdrhistogram-swift")]),
        .executableTarget(
            name: "moe-routerctl",
            dependencies: ["CMoERouterClient", "CMoERouterWire", "CZMQ", "MoERouterModels", "MoERouting",
                           .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "ZIPFoundation", package: "ZIPFoundation")]),
    ]
)
