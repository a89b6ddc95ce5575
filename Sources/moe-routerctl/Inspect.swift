import ArgumentParser
import MoERouterModels
import MoERouting

/// What `moe-routerd --model DIR` would build, without a daemon.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The layers a checkpoint directory gives (moe-routerd --model DIR), read as the daemon reads it.")

    @Argument(help: "A Hugging Face checkpoint directory (config.json + safetensors).")
    var directory: String

    @Option(help: "Gate dtype: auto (the checkpoint's torch_dtype), fp32, bf16, fp16.")
    var gateDtype: String = "auto"

    func run() throws {
        guard let gate = GateDTypeChoice(name: gateDtype) else {
            throw ValidationError("--gate-dtype \(gateDtype): expected auto, fp32, bf16 or fp16")
        }
        let model: Checkpoint
        do { model = try Checkpoint(directory: directory, gate: gate) } catch {
            printError("\(error)")
            throw ExitCode(66)
        }
        print(model.summary)
        for s in model.layers {
            print("\(s.name)  \(s.method.name) E=\(s.numExperts) k=\(s.topK) G=\(s.numExpertGroup) Gk=\(s.topKGroup) "
                  + "scoring=\(s.scoring) renormalize=\(s.renormalize) rsf=\(s.routedScalingFactor)")
        }
    }
}
