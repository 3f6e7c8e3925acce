package dev.edgekit.core

import org.json.JSONArray
import org.json.JSONObject
import java.io.File

/** A bundle.json error the app shows as one line (what is wrong; what to do). */
class BundleException(message: String) : Exception(message)

/** One graph input or output as bundle.json names it. */
class IoSpec(val name: String, val dtype: String)

/** The static graphs and their KV layout (android bundles: runtime.engine == "onnxruntime"). */
class OrtRuntime(
    val prefillFile: String, val prefillTokens: Int,
    val decodeFile: String?, val decodeTokens: Int,
    val inputIds: IoSpec, val attentionMask: IoSpec, val positionIds: IoSpec,
    val pastKey: IoSpec, val pastValue: IoSpec,
    val logits: IoSpec, val presentKey: IoSpec, val presentValue: IoSpec,
    val layers: Int, val kvHeads: Int, val headDim: Int, val slots: Int, val kvDtype: String,
    val preferredProvider: String, val fallbackProvider: String,
    val sessionOptions: Map<String, String>
)

class SamplingDefaults(val temperature: Double, val topK: Int, val topP: Double, val repeatPenalty: Double,
                       val maxNewTokens: Int)

/**
 * bundle.json as the apps read it: the same facts the Python reference loop reads
 * (edgekit/package/reference.py), nothing else. [dir] holds the bundle's files.
 */
class Bundle(val json: JSONObject, val dir: File?) {
    val platform: String = json.getString("platform")
    val contextLength: Int = json.getInt("context_length")
    val tokenizerFile: String = json.getJSONObject("tokenizer").getString("file")
    val tokenizerKind: String = json.getJSONObject("tokenizer").getString("kind")
    val addPrefix: IntArray = ints(json.getJSONObject("tokenizer").getJSONObject("add_special").getJSONArray("prefix"))
    val addSuffix: IntArray = ints(json.getJSONObject("tokenizer").getJSONObject("add_special").getJSONArray("suffix"))
    val bos: Int? = optInt(json.getJSONObject("special_ids"), "bos")
    val pad: Int? = optInt(json.getJSONObject("special_ids"), "pad")
    val eos: Set<Int> = ints(json.getJSONObject("special_ids").getJSONArray("eos")).toSet()
    val chat: ChatFormat? = json.getJSONObject("chat").let { c ->
        if (c.isNull("format")) null else ChatFormat.fromJson(c.getJSONObject("format"))
    }
    val sampling: SamplingDefaults = json.getJSONObject("sampling").let { s ->
        SamplingDefaults(s.getDouble("temperature"), s.getInt("top_k"), s.getDouble("top_p"),
            s.getDouble("repeat_penalty"), s.getInt("max_new_tokens"))
    }

    /** The onnxruntime description; throws for an iOS bundle. */
    fun ortRuntime(): OrtRuntime {
        val rt = json.getJSONObject("runtime")
        if (rt.getString("engine") != "onnxruntime") throw BundleException("this is a ${platform} bundle; " +
            "the Android app needs one written by edgekit package --platform android")
        val graphs = rt.getJSONObject("graphs")
        val prefill = graphs.getJSONObject("prefill")
        val decode = if (graphs.has("decode")) graphs.getJSONObject("decode") else null
        val inputs = rt.getJSONObject("inputs")
        val outputs = rt.getJSONObject("outputs")
        val kv = rt.getJSONObject("kv")
        val providers = rt.getJSONObject("providers")
        val options = HashMap<String, String>()
        val so = rt.getJSONObject("session_options")
        val keys = so.keys()
        while (keys.hasNext()) { val k = keys.next(); options[k] = so.getString(k) }
        return OrtRuntime(
            prefill.getString("file"), prefill.getInt("tokens"),
            decode?.getString("file"), decode?.getInt("tokens") ?: prefill.getInt("tokens"),
            io(inputs, "input_ids"), io(inputs, "attention_mask"), io(inputs, "position_ids"),
            io(inputs, "past_key"), io(inputs, "past_value"),
            io(outputs, "logits"), io(outputs, "present_key"), io(outputs, "present_value"),
            kv.getInt("layers"), kv.getInt("kv_heads"), kv.getInt("head_dim"), kv.getInt("slots"), kv.getString("dtype"),
            providers.getString("preferred"), providers.getString("fallback"), options)
    }

    /** The bundle's tokenizer (its tokenizer.json through [ByteLevelBpe]). */
    fun tokenizer(): ByteLevelBpe {
        if (tokenizerKind != "byte_level_bpe") throw BundleException("the bundle's tokenizer is not byte-level BPE " +
            "(bundle.json tokenizer.kind = $tokenizerKind); this app cannot run it")
        val d = dir ?: throw BundleException("no bundle directory")
        return ByteLevelBpe.fromJson(File(d, tokenizerFile).readText())
    }

    /** Ids for a plain (non-chat) prompt: the text's ids between the ids the tokenizer adds. */
    fun encodePlain(tok: ByteLevelBpe, text: String): IntArray = addPrefix + tok.encode(text) + addSuffix

    /** Ids for a chat: the bundle's chat format rendered, then tokenized without added ids. */
    fun encodeChat(tok: ByteLevelBpe, messages: List<Message>): IntArray {
        val format = chat ?: throw BundleException("the bundle has no usable chat format; use plain completion")
        return tok.encode(format.render(messages, true))
    }

    companion object {
        const val SCHEMA_VERSION = 1

        fun load(dir: File): Bundle {
            val file = File(dir, "bundle.json")
            if (!file.isFile) throw BundleException("${dir.path} has no bundle.json; push the output of edgekit package")
            return parse(file.readText(), dir)
        }

        fun parse(text: String, dir: File?): Bundle {
            val json = JSONObject(text)
            val version = json.optInt("schema_version", -1)
            if (version < 1) throw BundleException("bundle.json has no schema_version; re-create it with edgekit package")
            if (version > SCHEMA_VERSION) throw BundleException("bundle.json has schema version $version, newer than " +
                "the $SCHEMA_VERSION this app reads; update the app")
            return Bundle(json, dir)
        }

        internal fun ints(a: JSONArray): IntArray = IntArray(a.length()) { a.getInt(it) }

        private fun optInt(o: JSONObject, key: String): Int? = if (o.isNull(key)) null else o.getInt(key)

        private fun io(o: JSONObject, key: String): IoSpec {
            val s = o.getJSONObject(key)
            return IoSpec(s.getString("name"), s.getString("dtype"))
        }
    }
}
