package dev.edgekit.core

import org.json.JSONObject

class Message(val role: String, val content: String)

/**
 * The chat template reduced to fixed strings by edgekit package (bundle.json chat.format), which checked
 * at package time that this renders exactly what the model's Jinja template renders.
 */
class ChatFormat(
    val prefix: String,
    val roles: Map<String, Pair<String, String>>,
    val generationPrompt: String,
    val defaultSystem: String?
) {
    fun render(messages: List<Message>, addGenerationPrompt: Boolean): String {
        val sb = StringBuilder(prefix)
        if (defaultSystem != null && (messages.isEmpty() || messages[0].role != "system")) {
            val sys = role("system")
            sb.append(sys.first).append(defaultSystem).append(sys.second)
        }
        for (m in messages) {
            val r = role(m.role)
            sb.append(r.first).append(m.content).append(r.second)
        }
        if (addGenerationPrompt) sb.append(generationPrompt)
        return sb.toString()
    }

    private fun role(name: String): Pair<String, String> =
        roles[name] ?: throw BundleException("the chat format has no role '$name'")

    companion object {
        fun fromJson(o: JSONObject): ChatFormat {
            val roles = HashMap<String, Pair<String, String>>()
            val r = o.getJSONObject("roles")
            val keys = r.keys()
            while (keys.hasNext()) {
                val k = keys.next()
                val v = r.getJSONObject(k)
                roles[k] = Pair(v.getString("before"), v.getString("after"))
            }
            return ChatFormat(o.getString("prefix"), roles, o.getString("generation_prompt"),
                if (o.isNull("default_system")) null else o.getString("default_system"))
        }
    }
}
