package dev.edgekit.core

import org.json.JSONArray
import org.json.JSONObject
import java.text.Normalizer
import java.util.regex.Pattern

/**
 * Byte-level BPE over a Hugging Face tokenizer.json, the kind bundle.json calls "byte_level_bpe":
 * added tokens matched first (leftmost, longest), optional NFC normalizer, pre-tokenizers ByteLevel /
 * Digits / Split (isolated regex) alone or in a Sequence, BPE merges by rank, ByteLevel decoder.
 * edgekit package marks any other tokenizer "other", and [Bundle.tokenizer] refuses it. Hand-written:
 * no JVM library reads tokenizer.json (the tokenizers library is Rust/Python); checked against the shared
 * vectors in mobile_demo/vectors/, which the Python tests check against transformers.
 */
class ByteLevelBpe private constructor(
    private val vocab: Map<String, Int>,
    private val ranks: Map<String, Int>,
    private val added: List<AddedToken>,
    private val steps: List<Step>,
    private val nfc: Boolean,
    private val ignoreMerges: Boolean,
    private val unkId: Int?
) {
    class AddedToken(val content: String, val id: Int, val special: Boolean)

    private val idToToken: Array<String?>
    private val addedById = HashMap<Int, AddedToken>()
    private val cache = HashMap<String, IntArray>()

    init {
        var max = -1
        for (v in vocab.values) if (v > max) max = v
        for (a in added) if (a.id > max) max = a.id
        idToToken = arrayOfNulls(max + 1)
        for ((k, v) in vocab) idToToken[v] = k
        for (a in added) { idToToken[a.id] = a.content; addedById[a.id] = a }
    }

    val vocabSize: Int get() = idToToken.size

    fun isSpecial(id: Int): Boolean = addedById[id]?.special == true

    fun tokenToId(token: String): Int? = vocab[token] ?: added.firstOrNull { it.content == token }?.id

    /** Ids of [text] with no ids added around it (added tokens inside the text are recognised). */
    fun encode(text: String): IntArray {
        val out = ArrayList<Int>()
        var i = 0
        var segmentStart = 0
        while (i < text.length) {
            val hit = addedAt(text, i)
            if (hit == null) { i++; continue }
            if (i > segmentStart) encodeSegment(text.substring(segmentStart, i), out)
            out.add(hit.id)
            i += hit.content.length
            segmentStart = i
        }
        if (segmentStart < text.length) encodeSegment(text.substring(segmentStart), out)
        return out.toIntArray()
    }

    /** Text of [ids], special tokens left out when [skipSpecial] (as transformers' decode does). */
    fun decode(ids: IntArray, skipSpecial: Boolean = true): String {
        val bytes = java.io.ByteArrayOutputStream()
        for (id in ids) {
            if (id < 0 || id >= idToToken.size) continue
            val a = addedById[id]
            if (a != null && a.special && skipSpecial) continue
            val token = idToToken[id] ?: continue
            // the ByteLevel decoder: a token whose every char is a byte char becomes those bytes, else its UTF-8
            val buf = ByteArray(token.length)
            var all = true
            for (k in 0 until token.length) {
                val b = CHAR_TO_BYTE[token[k]]
                if (b == null) { all = false; break }
                buf[k] = b.toByte()
            }
            if (all) bytes.write(buf, 0, token.length) else bytes.write(token.toByteArray(Charsets.UTF_8))
        }
        return String(bytes.toByteArray(), Charsets.UTF_8)
    }

    private fun addedAt(text: String, i: Int): AddedToken? {
        var best: AddedToken? = null
        for (a in added) {
            if (a.content.isNotEmpty() && text.startsWith(a.content, i) &&
                (best == null || a.content.length > best.content.length)) best = a
        }
        return best
    }

    private fun encodeSegment(segment: String, out: MutableList<Int>) {
        var pieces = listOf(if (nfc) Normalizer.normalize(segment, Normalizer.Form.NFC) else segment)
        for (step in steps) {
            val next = ArrayList<String>()
            for (p in pieces) step.split(p, next)
            pieces = next
        }
        for (p in pieces) for (id in bpe(p)) out.add(id)
    }

    private fun bpe(word: String): IntArray {
        val cached = cache[word]
        if (cached != null) return cached
        val whole = vocab[word]
        if (ignoreMerges && whole != null) return intArrayOf(whole).also { cache[word] = it }
        val symbols = ArrayList<String>(word.length)
        for (k in 0 until word.length) symbols.add(word.substring(k, k + 1))
        while (symbols.size > 1) {
            var bestRank = Int.MAX_VALUE
            var bestPair: String? = null
            for (k in 0 until symbols.size - 1) {
                val pair = symbols[k] + SEP + symbols[k + 1]
                val r = ranks[pair]
                if (r != null && r < bestRank) { bestRank = r; bestPair = pair }
            }
            if (bestPair == null) break
            val merged = ArrayList<String>(symbols.size)
            var k = 0
            while (k < symbols.size) {
                if (k < symbols.size - 1 && symbols[k] + SEP + symbols[k + 1] == bestPair) {
                    merged.add(symbols[k] + symbols[k + 1]); k += 2
                } else { merged.add(symbols[k]); k += 1 }
            }
            symbols.clear(); symbols.addAll(merged)
        }
        val ids = IntArray(symbols.size)
        for (k in symbols.indices) {
            ids[k] = vocab[symbols[k]] ?: unkId ?: throw BundleException("token '${symbols[k]}' is not in the vocabulary")
        }
        cache[word] = ids
        return ids
    }

    /** One pre-tokenizer: splits a piece into pieces. */
    private interface Step { fun split(piece: String, out: MutableList<String>) }

    private class RegexIsolated(val pattern: Pattern) : Step {
        override fun split(piece: String, out: MutableList<String>) {
            val m = pattern.matcher(piece)
            var last = 0
            while (m.find()) {
                if (m.end() == m.start()) continue
                if (m.start() > last) out.add(piece.substring(last, m.start()))
                out.add(piece.substring(m.start(), m.end()))
                last = m.end()
            }
            if (last < piece.length) out.add(piece.substring(last))
        }
    }

    private class Digits(val individual: Boolean) : Step {
        override fun split(piece: String, out: MutableList<String>) {
            val sb = StringBuilder()
            var inDigits = false
            var k = 0
            while (k < piece.length) {
                val cp = piece.codePointAt(k)
                val n = Character.charCount(cp)
                val digit = isNumeric(cp)
                if (sb.isNotEmpty() && (digit != inDigits || (digit && individual))) { out.add(sb.toString()); sb.setLength(0) }
                sb.appendCodePoint(cp)
                inDigits = digit
                k += n
            }
            if (sb.isNotEmpty()) out.add(sb.toString())
        }

        private fun isNumeric(cp: Int): Boolean {
            val t = Character.getType(cp)
            return t == Character.DECIMAL_DIGIT_NUMBER.toInt() || t == Character.LETTER_NUMBER.toInt() ||
                t == Character.OTHER_NUMBER.toInt()
        }
    }

    private class ByteLevel(val addPrefixSpace: Boolean, val useRegex: Boolean) : Step {
        override fun split(piece: String, out: MutableList<String>) {
            val text = if (addPrefixSpace && !piece.startsWith(" ")) " $piece" else piece
            val parts = ArrayList<String>()
            if (useRegex) RegexIsolated(GPT2).split(text, parts) else parts.add(text)
            for (p in parts) {
                val bytes = p.toByteArray(Charsets.UTF_8)
                val sb = StringBuilder(bytes.size)
                for (b in bytes) sb.append(BYTE_TO_CHAR[b.toInt() and 0xff])
                out.add(sb.toString())
            }
        }
    }

    companion object {
        private const val SEP = "\u0000"
        // GPT-2's pre-tokenizer pattern, as the tokenizers library's ByteLevel uses it; \s is Unicode whitespace there
        private val GPT2: Pattern = Pattern.compile(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
            Pattern.UNICODE_CHARACTER_CLASS)

        /** GPT-2's reversible byte -> printable char table. */
        val BYTE_TO_CHAR: CharArray = CharArray(256).also { table ->
            val direct = HashSet<Int>()
            for (b in '!'.toInt()..'~'.toInt()) direct.add(b)
            for (b in 0xA1..0xAC) direct.add(b)
            for (b in 0xAE..0xFF) direct.add(b)
            var n = 0
            for (b in 0 until 256) {
                if (b in direct) table[b] = b.toChar() else { table[b] = (256 + n).toChar(); n++ }
            }
        }
        val CHAR_TO_BYTE: Map<Char, Int> = HashMap<Char, Int>().also { m ->
            for (b in 0 until 256) m[BYTE_TO_CHAR[b]] = b
        }

        fun fromJson(text: String): ByteLevelBpe {
            val tj = JSONObject(text)
            val model = tj.getJSONObject("model")
            if (model.optString("type") != "BPE") throw BundleException("tokenizer.json is not a BPE model")
            val vocabJson = model.getJSONObject("vocab")
            val vocab = HashMap<String, Int>(vocabJson.length() * 2)
            val keys = vocabJson.keys()
            while (keys.hasNext()) { val k = keys.next(); vocab[k] = vocabJson.getInt(k) }
            val mergesJson = model.getJSONArray("merges")
            val ranks = HashMap<String, Int>(mergesJson.length() * 2)
            for (r in 0 until mergesJson.length()) {
                val m = mergesJson.get(r)
                val pair = if (m is JSONArray) m.getString(0) + SEP + m.getString(1)
                else (m as String).let { s -> val at = s.indexOf(' '); s.substring(0, at) + SEP + s.substring(at + 1) }
                if (!ranks.containsKey(pair)) ranks[pair] = r
            }
            val added = ArrayList<AddedToken>()
            val addedJson = tj.optJSONArray("added_tokens") ?: JSONArray()
            for (k in 0 until addedJson.length()) {
                val a = addedJson.getJSONObject(k)
                added.add(AddedToken(a.getString("content"), a.getInt("id"), a.optBoolean("special", false)))
            }
            val unk = if (model.isNull("unk_token")) null else vocab[model.optString("unk_token")]
            val normalizer = tj.optJSONObject("normalizer")
            val nfc = normalizer != null && normalizer.optString("type") == "NFC"
            if (normalizer != null && !nfc) throw BundleException("tokenizer.json normalizer ${normalizer.optString("type")} is not supported")
            return ByteLevelBpe(vocab, ranks, added, steps(tj.optJSONObject("pre_tokenizer")), nfc,
                model.optBoolean("ignore_merges", false), unk)
        }

        private fun steps(pre: JSONObject?): List<Step> {
            if (pre == null) return emptyList()
            val list = if (pre.optString("type") == "Sequence") {
                val a = pre.getJSONArray("pretokenizers")
                (0 until a.length()).map { a.getJSONObject(it) }
            } else listOf(pre)
            return list.map { p ->
                when (p.optString("type")) {
                    "ByteLevel" -> ByteLevel(p.optBoolean("add_prefix_space", false), p.optBoolean("use_regex", true))
                    "Digits" -> Digits(p.optBoolean("individual_digits", false))
                    "Split" -> {
                        val pattern = p.getJSONObject("pattern")
                        if (!pattern.has("Regex") || p.optString("behavior") != "Isolated" || p.optBoolean("invert", false))
                            throw BundleException("tokenizer.json Split pre-tokenizer other than an isolated regex")
                        RegexIsolated(Pattern.compile(pattern.getString("Regex"), Pattern.UNICODE_CHARACTER_CLASS))
                    }
                    else -> throw BundleException("tokenizer.json pre-tokenizer ${p.optString("type")} is not supported")
                }
            }
        }
    }
}
