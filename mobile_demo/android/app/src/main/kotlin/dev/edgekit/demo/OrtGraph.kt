package dev.edgekit.demo

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtSession
import ai.onnxruntime.platform.Fp16Conversions
import dev.edgekit.core.GraphOutput
import dev.edgekit.core.OrtRuntime
import dev.edgekit.core.StaticGraph
import java.io.File
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.nio.LongBuffer
import java.nio.ShortBuffer

/** Which execution provider a session ended up on, and why. */
class ProviderChoice(val provider: String, val note: String)

/**
 * One static ORT graph of the bundle as a [StaticGraph]: names, dtypes and shapes from bundle.json. NNAPI is
 * tried when asked for and the bundle prefers it; if onnxruntime cannot create the NNAPI session the graph falls
 * back to the CPU provider (bundle.json runtime.providers.fallback) and says so.
 */
class OrtGraph(
    private val env: OrtEnvironment,
    file: File,
    private val rt: OrtRuntime,
    override val tokens: Int,
    useNnapi: Boolean
) : StaticGraph, AutoCloseable {
    val choice: ProviderChoice
    private val session: OrtSession

    init {
        var made: OrtSession? = null
        var note = ""
        if (useNnapi) {
            try {
                val opts = options()
                opts.addNnapi()
                made = env.createSession(file.path, opts)
                note = "NNAPI (nodes NNAPI cannot take run on the CPU)"
            } catch (e: OrtException) {
                note = "NNAPI unavailable (${e.message?.lineSequence()?.firstOrNull()}); CPU fallback"
            }
        }
        if (made == null) {
            made = env.createSession(file.path, options())
            if (note.isEmpty()) note = "CPU"
        }
        session = made!!
        choice = ProviderChoice(if (note.startsWith("NNAPI (")) "NNAPI" else rt.fallbackProvider, note)
    }

    private fun options(): OrtSession.SessionOptions {
        val opts = OrtSession.SessionOptions()
        for ((k, v) in rt.sessionOptions) opts.addConfigEntry(k, v)
        return opts
    }

    private fun indexTensor(values: IntArray, shape: LongArray, dtype: String): OnnxTensor =
        if (dtype == "int64") OnnxTensor.createTensor(env, LongBuffer.wrap(LongArray(values.size) { values[it].toLong() }), shape)
        else OnnxTensor.createTensor(env, IntBuffer.wrap(values), shape)

    private fun kvTensor(values: FloatArray, shape: LongArray): OnnxTensor =
        if (rt.kvDtype == "float16") {
            val half = ShortArray(values.size) { Fp16Conversions.floatToFp16(values[it]) }
            OnnxTensor.createTensor(env, ShortBuffer.wrap(half), shape, OnnxJavaType.FLOAT16)
        } else OnnxTensor.createTensor(env, FloatBuffer.wrap(values), shape)

    override fun run(inputIds: IntArray, attentionMask: IntArray, positionIds: IntArray,
                     pastKeys: Array<FloatArray>, pastValues: Array<FloatArray>): GraphOutput {
        val t = tokens.toLong()
        val kvShape = longArrayOf(1, rt.kvHeads.toLong(), rt.slots.toLong(), rt.headDim.toLong())
        val feeds = HashMap<String, OnnxTensor>()
        try {
            feeds[rt.inputIds.name] = indexTensor(inputIds, longArrayOf(1, t), rt.inputIds.dtype)
            feeds[rt.attentionMask.name] = indexTensor(attentionMask, longArrayOf(1, rt.slots + t), rt.attentionMask.dtype)
            feeds[rt.positionIds.name] = indexTensor(positionIds, longArrayOf(1, t), rt.positionIds.dtype)
            for (i in 0 until rt.layers) {
                feeds[rt.pastKey.name.replace("{i}", i.toString())] = kvTensor(pastKeys[i], kvShape)
                feeds[rt.pastValue.name.replace("{i}", i.toString())] = kvTensor(pastValues[i], kvShape)
            }
            session.run(feeds).use { result ->
                // getFloatBuffer upcasts float16 outputs
                val logits = floats(result.get(rt.logits.name).get() as OnnxTensor)
                val keys = Array(rt.layers) { floats(result.get(rt.presentKey.name.replace("{i}", it.toString())).get() as OnnxTensor) }
                val values = Array(rt.layers) { floats(result.get(rt.presentValue.name.replace("{i}", it.toString())).get() as OnnxTensor) }
                return GraphOutput(logits, keys, values)
            }
        } finally {
            for (tensor in feeds.values) tensor.close()
        }
    }

    private fun floats(tensor: OnnxTensor): FloatArray {
        val buffer = tensor.floatBuffer
        val out = FloatArray(buffer.remaining())
        buffer.get(out)
        return out
    }

    override fun close() = session.close()
}
