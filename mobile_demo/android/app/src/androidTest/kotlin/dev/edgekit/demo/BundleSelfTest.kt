package dev.edgekit.demo

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.junit.Assert.assertArrayEquals
import org.junit.Test
import org.junit.runner.RunWith
import java.io.File

/**
 * On a device or emulator: the app's loop on the bundle reproduces the greedy self-test edgekit recorded at
 * package time (the same tokens `edgekit run` and `edgekit package verify` produce), on the CPU provider and
 * with NNAPI asked for (which falls back to the CPU where the device has no NNAPI). The bundle path comes from
 * the instrumentation argument "bundle" (default /data/local/tmp/edgekit-bundle).
 */
@RunWith(AndroidJUnit4::class)
class BundleSelfTest {
    private val dir = File(InstrumentationRegistry.getArguments().getString("bundle") ?: "/data/local/tmp/edgekit-bundle")

    private fun check(useNnapi: Boolean) {
        ChatEngine(dir, useNnapi).use { engine ->
            val test = engine.bundle.json.getJSONObject("selftest")
            val prompt = test.getJSONArray("prompt_ids").let { a -> IntArray(a.length()) { a.getInt(it) } }
            val want = test.getJSONArray("greedy_ids").let { a -> IntArray(a.length()) { a.getInt(it) } }
            val ids = if (test.getBoolean("chat"))
                engine.bundle.encodeChat(engine.tokenizer, listOf(dev.edgekit.core.Message("user", test.getString("prompt"))))
            else engine.bundle.encodePlain(engine.tokenizer, test.getString("prompt"))
            assertArrayEquals("prompt ids", prompt, ids)
            assertArrayEquals("greedy tokens on ${engine.provider}", want, engine.complete(ids, want.size))
        }
    }

    @Test fun selftestOnCpu() = check(false)

    @Test fun selftestWithNnapiOrFallback() = check(true)
}
