package dev.edgekit.core

/** One static-shape graph call: [tokens] fixed, KV buffers of every slot in, the chunk's new K/V out. */
interface StaticGraph {
    val tokens: Int

    /** inputIds/positionIds [tokens], attentionMask [slots + tokens]; past per layer [kvHeads * slots * headDim]. */
    fun run(inputIds: IntArray, attentionMask: IntArray, positionIds: IntArray,
            pastKeys: Array<FloatArray>, pastValues: Array<FloatArray>): GraphOutput
}

/** logits [tokens * vocab]; presentKeys/Values per layer [kvHeads * tokens * headDim]. */
class GraphOutput(val logits: FloatArray, val presentKeys: Array<FloatArray>, val presentValues: Array<FloatArray>)

/**
 * The KV-cache loop over the static graphs, as bundle.json's runtime.kv describes it (and as
 * edgekit/package/reference.py does it): the host owns the buffers, a call's new K/V go to slots
 * [p, p+n), the mask marks the p cached slots and the chunk's n real tokens, a short chunk is padded with
 * id 0. Prefill runs the chunk graph, a single token the decode graph when the bundle has one.
 */
class KvCacheLoop(
    private val prefill: StaticGraph,
    private val decode: StaticGraph?,
    val layers: Int, val kvHeads: Int, val headDim: Int, val slots: Int, val vocab: Int
) {
    val keys = Array(layers) { FloatArray(kvHeads * slots * headDim) }
    val values = Array(layers) { FloatArray(kvHeads * slots * headDim) }
    var position = 0
        private set

    /** Forget everything after [n] tokens (slots past n are masked out and overwritten before use). */
    fun truncate(n: Int) { position = if (n < position) n else position }

    /** Run [tokens] after the cached ones; returns the logits after the last of them. */
    fun forward(tokens: IntArray): FloatArray {
        var logits = FloatArray(0)
        var i = 0
        while (i < tokens.size) {
            val left = tokens.size - i
            val graph = if (left == 1 && decode != null) decode else prefill
            val n = if (left < graph.tokens) left else graph.tokens
            logits = step(graph, tokens.copyOfRange(i, i + n))
            i += n
        }
        return logits
    }

    private fun step(graph: StaticGraph, chunk: IntArray): FloatArray {
        val t = graph.tokens
        val n = chunk.size
        val p = position
        if (p + n > slots) throw IllegalStateException("the context of $slots tokens is full")
        val ids = IntArray(t)
        for (k in 0 until n) ids[k] = chunk[k]
        val mask = IntArray(slots + t)
        for (k in 0 until p) mask[k] = 1
        for (k in 0 until n) mask[slots + k] = 1
        val pos = IntArray(t) { p + it }
        val out = graph.run(ids, mask, pos, keys, values)
        for (layer in 0 until layers) {
            for (h in 0 until kvHeads) {
                System.arraycopy(out.presentKeys[layer], (h * t) * headDim, keys[layer], (h * slots + p) * headDim, n * headDim)
                System.arraycopy(out.presentValues[layer], (h * t) * headDim, values[layer], (h * slots + p) * headDim, n * headDim)
            }
        }
        position = p + n
        return out.logits.copyOfRange((n - 1) * vocab, n * vocab)
    }

    /** Prefill [prompt], then sample until an end id, [maxTokens], a full context, or [onToken] returns false. */
    fun generate(prompt: IntArray, sampler: Sampler, maxTokens: Int, eos: Set<Int>,
                 onToken: (Int) -> Boolean = { true }): IntArray {
        val out = ArrayList<Int>()
        val history = ArrayList<Int>()
        for (id in prompt) history.add(id)
        var logits = forward(prompt)
        while (out.size < maxTokens) {
            val token = sampler.sample(logits, history.toIntArray())
            if (token in eos) break
            out.add(token)
            history.add(token)
            if (!onToken(token) || out.size >= maxTokens || position >= slots) break
            logits = forward(intArrayOf(token))
        }
        return out.toIntArray()
    }
}
