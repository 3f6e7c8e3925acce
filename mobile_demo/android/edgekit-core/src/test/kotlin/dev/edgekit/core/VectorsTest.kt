package dev.edgekit.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.fail
import org.junit.Assume.assumeTrue
import org.junit.Test
import java.io.File
import java.security.MessageDigest

/**
 * The shared vectors (mobile_demo/vectors/NAME.json, written by python -m edgekit.package.vectors and checked
 * against transformers by tests/test_package_vectors.py) against this library's tokenizer, chat format and
 * stream decoder. System properties: edgekit.vectors (the vectors directory), edgekit.tokenizers (a
 * directory with NAME/tokenizer.json or NAME.tokenizer.json per vectors file; absent ones are skipped).
 */
class VectorsTest {
    private val vectorsDir = File(System.getProperty("edgekit.vectors") ?: "../../vectors")
    private val tokenizersDir = File(System.getProperty("edgekit.tokenizers") ?: "../../vectors/tokenizers")

    private fun cases(): List<Pair<JSONObject, ByteLevelBpe>> {
        val files = vectorsDir.listFiles { f -> f.name.endsWith(".json") }?.sortedBy { it.name } ?: emptyList()
        assumeTrue("no vectors in ${vectorsDir.absolutePath}", files.isNotEmpty())
        val out = ArrayList<Pair<JSONObject, ByteLevelBpe>>()
        for (f in files) {
            val v = JSONObject(f.readText())
            val name = f.name.removeSuffix(".json")
            val tokFile = listOf(File(tokenizersDir, "$name/tokenizer.json"), File(tokenizersDir, "$name.tokenizer.json"))
                .firstOrNull { it.isFile }
            if (tokFile == null) { println("skip $name: no tokenizer.json under ${tokenizersDir.path}"); continue }
            assertEquals("$name: tokenizer.json is not the one the vectors were made with", v.getString("tokenizer_sha256"),
                sha256(tokFile.readBytes()))
            out.add(Pair(v, ByteLevelBpe.fromJson(tokFile.readText())))
        }
        assumeTrue("no tokenizer found for any vectors file", out.isNotEmpty())
        return out
    }

    private fun bundleOf(v: JSONObject): Bundle {
        val b = JSONObject(v.getJSONObject("bundle").toString())
        b.put("schema_version", 1).put("platform", "android")
        return Bundle.parse(b.toString(), null)
    }

    @Test fun encodeMatchesVectors() {
        for ((v, tok) in cases()) {
            val bundle = bundleOf(v)
            val probes = v.getJSONArray("encode")
            for (k in 0 until probes.length()) {
                val p = probes.getJSONObject(k)
                val text = p.getString("text")
                assertArrayEquals("${v.getString("model")} ${p.getString("name")}", ints(p.getJSONArray("ids")), tok.encode(text))
                assertArrayEquals("${v.getString("model")} ${p.getString("name")} with special ids",
                    ints(p.getJSONArray("ids_with_special")), bundle.encodePlain(tok, text))
            }
        }
    }

    @Test fun decodeMatchesVectors() {
        for ((v, tok) in cases()) {
            val probes = v.getJSONArray("decode")
            for (k in 0 until probes.length()) {
                val p = probes.getJSONObject(k)
                assertEquals("${v.getString("model")} ${p.getString("name")}", p.getString("text"), tok.decode(ints(p.getJSONArray("ids"))))
            }
        }
    }

    @Test fun chatMatchesVectors() {
        for ((v, tok) in cases()) {
            val bundle = bundleOf(v)
            val chats = v.getJSONArray("chat")
            for (k in 0 until chats.length()) {
                val c = chats.getJSONObject(k)
                val ms = c.getJSONArray("messages")
                val messages = (0 until ms.length()).map { Message(ms.getJSONObject(it).getString("role"), ms.getJSONObject(it).getString("content")) }
                val format = bundle.chat ?: throw AssertionError("no chat format")
                assertEquals(c.getString("prompt"), format.render(messages, true))
                assertArrayEquals(ints(c.getJSONArray("ids")), bundle.encodeChat(tok, messages))
            }
        }
    }

    @Test fun greedyTextAndStreaming() {
        for ((v, tok) in cases()) {
            val runs = v.getJSONArray("greedy")
            for (k in 0 until runs.length()) {
                val r = runs.getJSONObject(k)
                val tokens = ints(r.getJSONArray("tokens"))
                assertEquals(r.getString("text"), tok.decode(tokens))
                val stream = StreamDecoder(tok)
                val sb = StringBuilder()
                for (t in tokens) sb.append(stream.push(t))
                sb.append(stream.flush())
                assertEquals(r.getString("text"), sb.toString())
                val prompt = r.getString("prompt")
                val bundle = bundleOf(v)
                val ids = if (r.getBoolean("chat")) bundle.encodeChat(tok, listOf(Message("user", prompt)))
                else bundle.encodePlain(tok, prompt)
                assertArrayEquals(ints(r.getJSONArray("prompt_ids")), ids)
            }
        }
    }

    @Test fun newerSchemaIsRefused() {
        try {
            Bundle.parse("{\"schema_version\": 2}", null)
            fail("a newer schema version must be refused")
        } catch (e: BundleException) {
            assertEquals(true, e.message!!.contains("schema version 2"))
        }
    }

    companion object {
        fun ints(a: JSONArray): IntArray = IntArray(a.length()) { a.getInt(it) }

        fun sha256(bytes: ByteArray): String {
            val d = MessageDigest.getInstance("SHA-256").digest(bytes)
            val sb = StringBuilder()
            for (b in d) sb.append(String.format("%02x", b.toInt() and 0xff))
            return sb.toString()
        }
    }
}
