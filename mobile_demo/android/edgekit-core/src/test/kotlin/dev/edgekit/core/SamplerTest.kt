package dev.edgekit.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class SamplerTest {
    @Test fun greedyIsArgmaxFirstOfTies() {
        val s = Sampler(SamplingParams())
        assertEquals(2, s.sample(floatArrayOf(0f, 1f, 3f, 3f, -1f), IntArray(0)))
    }

    @Test fun topK1IsGreedyAtAnyTemperature() {
        val s = Sampler(SamplingParams(temperature = 5.0, topK = 1, seed = 7))
        for (i in 0 until 200) assertEquals(1, s.sample(floatArrayOf(0.5f, 0.6f, 0.59f), IntArray(0)))
    }

    @Test fun temperatureOneDrawsTheSoftmax() {
        // logits 0 and ln 3: probabilities 1/4 and 3/4
        val s = Sampler(SamplingParams(temperature = 1.0, seed = 1234))
        val logits = floatArrayOf(0f, Math.log(3.0).toFloat())
        var ones = 0
        val n = 20000
        for (i in 0 until n) if (s.sample(logits, IntArray(0)) == 1) ones++
        val share = ones.toDouble() / n
        assertTrue("share $share", Math.abs(share - 0.75) < 0.015)
    }

    @Test fun seedReproduces() {
        val logits = FloatArray(50) { (it % 7).toFloat() / 3f }
        val a = Sampler(SamplingParams(temperature = 0.8, topP = 0.9, seed = 42))
        val b = Sampler(SamplingParams(temperature = 0.8, topP = 0.9, seed = 42))
        for (i in 0 until 100) assertEquals(a.sample(logits, IntArray(0)), b.sample(logits, IntArray(0)))
    }

    @Test fun topPKeepsTheSmallestSetReachingP() {
        // probabilities about 0.665, 0.245, 0.090: top-p 0.5 keeps only the first
        val s = Sampler(SamplingParams(temperature = 1.0, topP = 0.5, seed = 3))
        for (i in 0 until 200) assertEquals(0, s.sample(floatArrayOf(2f, 1f, 0f), IntArray(0)))
    }

    @Test fun repeatPenaltyDividesPositiveLogits() {
        val s = Sampler(SamplingParams(repeatPenalty = 1.2))
        assertEquals(1, s.sample(floatArrayOf(2.0f, 1.9f), intArrayOf(0)))  // 2.0 / 1.2 < 1.9
        assertEquals(0, s.sample(floatArrayOf(2.0f, 1.9f), intArrayOf(5)))
    }
}
