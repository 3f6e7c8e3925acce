package dev.edgekit.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

/**
 * The KV loop against a toy graph with the bundle's static contract whose answer is known in closed form:
 * each token's key is its id (times layer + 1, on every head and lane), and the next token is
 * (sum of the visible tokens' ids + position) mod vocab. The toy reads the past only through the buffers and
 * the mask, and checks positions and the layout of every layer and head, so a wrong slot, mask or copy
 * changes the tokens.
 */
class KvCacheLoopTest {
    private val layers = 3
    private val heads = 2
    private val dim = 3
    private val slots = 40
    private val vocab = 97

    inner class Toy(override val tokens: Int) : StaticGraph {
        var calls = 0
        override fun run(inputIds: IntArray, attentionMask: IntArray, positionIds: IntArray,
                         pastKeys: Array<FloatArray>, pastValues: Array<FloatArray>): GraphOutput {
            calls++
            assertEquals(tokens, inputIds.size)
            assertEquals(slots + tokens, attentionMask.size)
            var cached = 0.0
            var visible = 0
            for (k in 0 until slots) if (attentionMask[k] == 1) {
                visible++
                val key = pastKeys[0][k * dim]
                for (l in 0 until layers) for (h in 0 until heads) for (d in 0 until dim) {
                    assertEquals(key * (l + 1), pastKeys[l][(h * slots + k) * dim + d], 0f)
                    assertEquals(-key * (l + 1), pastValues[l][(h * slots + k) * dim + d], 0f)
                }
                cached += key
            }
            val logits = FloatArray(tokens * vocab)
            var running = cached
            for (j in 0 until tokens) {
                if (attentionMask[slots + j] != 1) continue
                assertEquals(visible + j, positionIds[j])
                running += inputIds[j]
                logits[j * vocab + ((running.toLong() + positionIds[j]) % vocab).toInt()] = 1f
            }
            val pk = Array(layers) { l -> FloatArray(heads * tokens * dim) { i -> inputIds[(i / dim) % tokens] * (l + 1f) } }
            val pv = Array(layers) { l -> FloatArray(heads * tokens * dim) { i -> -inputIds[(i / dim) % tokens] * (l + 1f) } }
            return GraphOutput(logits, pk, pv)
        }
    }

    private fun expected(prompt: IntArray, n: Int): IntArray {
        val seq = ArrayList<Int>()
        for (t in prompt) seq.add(t)
        val out = ArrayList<Int>()
        for (i in 0 until n) {
            var sum = 0L
            for (t in seq) sum += t
            val next = ((sum + seq.size - 1) % vocab).toInt()
            out.add(next)
            seq.add(next)
        }
        return out.toIntArray()
    }

    @Test fun chunkedPrefillThenDecodeMatchesClosedForm() {
        val prefill = Toy(4)
        val decode = Toy(1)
        val loop = KvCacheLoop(prefill, decode, layers, heads, dim, slots, vocab)
        val prompt = intArrayOf(5, 11, 2, 8, 13, 1, 7, 3, 9, 4)  // 2 full chunks and a padded one
        val got = loop.generate(prompt, Sampler(SamplingParams()), 12, emptySet())
        assertArrayEquals(expected(prompt, 12), got)
        assertEquals(3, prefill.calls)
        assertEquals(11, decode.calls)
        assertEquals(prompt.size + 11, loop.position)
    }

    @Test fun singleGraphAndTruncate() {
        val loop = KvCacheLoop(Toy(4), null, layers, heads, dim, slots, vocab)
        val prompt = intArrayOf(3, 1, 4, 1, 5, 9, 2, 6)
        loop.forward(prompt)
        loop.truncate(5)
        val rest = intArrayOf(20, 30)
        val logits = loop.forward(rest)
        val seq = intArrayOf(3, 1, 4, 1, 5, 20, 30)
        assertEquals(expected(seq, 1)[0], Sampler.argmax(logits))
    }

    @Test fun stopsAtEndIdAndFullContext() {
        val loop = KvCacheLoop(Toy(4), Toy(1), layers, heads, dim, slots, vocab)
        val prompt = intArrayOf(5, 11, 2)
        val first = expected(prompt, 3)
        val got = loop.generate(prompt, Sampler(SamplingParams()), 10, setOf(first[2]))
        assertArrayEquals(first.copyOfRange(0, 2), got)
        val full = KvCacheLoop(Toy(4), Toy(1), layers, heads, dim, slots, vocab)
        // every slot filled, plus the token sampled from the last slot's logits (which needs no slot of its own)
        assertEquals(slots - prompt.size + 1, full.generate(prompt, Sampler(SamplingParams()), 1000, emptySet()).size)
    }
}
