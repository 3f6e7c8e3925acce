package dev.edgekit.core

import java.util.Random

/** The sampling chain of edgekit's runtime (runtimes/sampling.py): penalties -> top-k -> top-p -> min-p ->
 * temperature -> draw; temperature 0 is greedy (argmax, the first of equal maxima, as numpy's argmax). */
class SamplingParams(
    val temperature: Double = 0.0,
    val topK: Int = 0,
    val topP: Double = 1.0,
    val minP: Double = 0.0,
    val repeatPenalty: Double = 1.0,
    val penaltyLastN: Int = 64,
    val seed: Long? = null
) {
    companion object {
        fun from(d: SamplingDefaults, seed: Long? = null) =
            SamplingParams(d.temperature, d.topK, d.topP, 0.0, d.repeatPenalty, 64, seed)
    }
}

class Sampler(private val p: SamplingParams) {
    private val rng: Random = if (p.seed != null) Random(p.seed) else Random()

    fun sample(logits: FloatArray, history: IntArray): Int {
        val x = penalised(logits, history)
        if (p.temperature <= 0.0) return argmax(x)
        var order = (x.indices).sortedWith(Comparator { a, b -> java.lang.Float.compare(x[b], x[a]) })
        if (p.topK > 0 && p.topK < order.size) order = order.subList(0, p.topK)
        val probs = softmax(order.map { x[it].toDouble() }.toDoubleArray())
        var keep = order.size
        if (p.topP < 1.0) {
            var sum = 0.0
            for (k in probs.indices) { sum += probs[k]; if (sum >= p.topP) { keep = k + 1; break } }
        }
        if (p.minP > 0.0) {
            var k = 0
            while (k < keep && probs[k] >= p.minP * probs[0]) k++
            keep = if (k < 1) 1 else k
        }
        val kept = order.subList(0, keep)
        val tempered = softmax(kept.map { x[it] / p.temperature }.toDoubleArray())
        var r = rng.nextDouble()
        for (k in tempered.indices) { r -= tempered[k]; if (r < 0) return kept[k] }
        return kept[kept.size - 1]
    }

    private fun penalised(logits: FloatArray, history: IntArray): FloatArray {
        if (p.repeatPenalty == 1.0 || p.penaltyLastN == 0 || history.isEmpty()) return logits
        val out = logits.copyOf()
        val seen = HashSet<Int>()
        val from = if (history.size > p.penaltyLastN) history.size - p.penaltyLastN else 0
        for (k in from until history.size) seen.add(history[k])
        for (id in seen) {
            if (id < 0 || id >= out.size) continue
            out[id] = if (out[id] > 0) (out[id] / p.repeatPenalty).toFloat() else (out[id] * p.repeatPenalty).toFloat()
        }
        return out
    }

    companion object {
        fun argmax(x: FloatArray): Int {
            var best = 0
            for (k in 1 until x.size) if (x[k] > x[best]) best = k
            return best
        }

        private fun softmax(x: DoubleArray): DoubleArray {
            var m = Double.NEGATIVE_INFINITY
            for (v in x) if (v > m) m = v
            var sum = 0.0
            val e = DoubleArray(x.size) { Math.exp(x[it] - m) }
            for (v in e) sum += v
            for (k in e.indices) e[k] /= sum
            return e
        }
    }
}
