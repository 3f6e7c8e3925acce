package dev.edgekit.demo

import ai.onnxruntime.OrtEnvironment
import dev.edgekit.core.Bundle
import dev.edgekit.core.ByteLevelBpe
import dev.edgekit.core.KvCacheLoop
import dev.edgekit.core.Message
import dev.edgekit.core.Sampler
import dev.edgekit.core.SamplingParams
import dev.edgekit.core.StreamDecoder
import java.io.File

/**
 * A chat over one bundle: the bundle's tokenizer and chat format, its static graphs through [OrtGraph], and the
 * KV-cache loop of edgekit-core. Multi-turn: the history is re-rendered each turn, and the cache keeps the longest
 * common prefix with the new prompt, so only the new tokens are evaluated.
 */
class ChatEngine(dir: File, useNnapi: Boolean) : AutoCloseable {
    val bundle: Bundle = Bundle.load(dir)
    val tokenizer: ByteLevelBpe = bundle.tokenizer()
    private val rt = bundle.ortRuntime()
    private val env = OrtEnvironment.getEnvironment()
    private val wantNnapi = useNnapi && rt.preferredProvider == "NNAPI"
    private val prefill = OrtGraph(env, File(dir, rt.prefillFile), rt, rt.prefillTokens, wantNnapi)
    private val decode = rt.decodeFile?.let { OrtGraph(env, File(dir, it), rt, rt.decodeTokens, wantNnapi) }
    val provider: String get() = prefill.choice.note
    private val loop = KvCacheLoop(prefill, decode, rt.layers, rt.kvHeads, rt.headDim, rt.slots,
        bundle.json.getJSONObject("model").getInt("vocab_size"))
    private val messages = ArrayList<Message>()
    private var cached = IntArray(0)

    /** Greedy (or the bundle's sampling defaults) tokens after [ids], from an empty cache. */
    fun complete(ids: IntArray, maxTokens: Int, params: SamplingParams = SamplingParams()): IntArray {
        loop.truncate(0)
        cached = IntArray(0)
        return loop.generate(ids, Sampler(params), maxTokens, bundle.eos)
    }

    /** One chat turn; streams text pieces to [onText] and returns the answer. */
    fun ask(text: String, params: SamplingParams, onText: (String) -> Unit): String {
        messages.add(Message("user", text))
        val prompt = bundle.encodeChat(tokenizer, messages)
        var common = 0
        while (common < cached.size && common < prompt.size - 1 && cached[common] == prompt[common]) common++
        loop.truncate(common)
        common = loop.position
        val stream = StreamDecoder(tokenizer)
        val answer = StringBuilder()
        val out = ArrayList<Int>()
        val sampler = Sampler(params)
        val tokens = loop.generate(prompt.copyOfRange(common, prompt.size), sampler, bundle.sampling.maxNewTokens,
            bundle.eos) { token ->
            out.add(token)
            val piece = stream.push(token)
            if (piece.isNotEmpty()) { answer.append(piece); onText(piece) }
            loop.position < bundle.contextLength
        }
        val tail = stream.flush()
        if (tail.isNotEmpty()) { answer.append(tail); onText(tail) }
        cached = (prompt + tokens).copyOfRange(0, loop.position)  // the last sampled token was never fed
        messages.add(Message("assistant", answer.toString()))
        return answer.toString()
    }

    override fun close() {
        prefill.close()
        decode?.close()
    }
}
