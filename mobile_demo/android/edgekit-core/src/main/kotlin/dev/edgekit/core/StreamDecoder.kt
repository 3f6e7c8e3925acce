package dev.edgekit.core

/**
 * Streams text from token ids without emitting half a character, as edgekit's runtime does
 * (runtimes/generate.py, after Hugging Face text-generation-inference): a token's text is what decoding
 * ids[prefix:] adds to decoding ids[prefix:read], held back while it ends in U+FFFD.
 */
class StreamDecoder(private val tok: ByteLevelBpe) {
    private val ids = ArrayList<Int>()
    private var prefix = 0
    private var read = 0

    fun push(token: Int): String {
        ids.add(token)
        val before = tok.decode(ids.subList(prefix, read).toIntArray())
        val after = tok.decode(ids.subList(prefix, ids.size).toIntArray())
        if (after.length > before.length && !after.endsWith("\uFFFD")) {
            prefix = read
            read = ids.size
            return after.substring(before.length)
        }
        return ""
    }

    fun flush(): String {
        val before = tok.decode(ids.subList(prefix, read).toIntArray())
        val after = tok.decode(ids.subList(prefix, ids.size).toIntArray())
        prefix = ids.size
        read = ids.size
        return if (after.length > before.length) after.substring(before.length) else ""
    }
}
