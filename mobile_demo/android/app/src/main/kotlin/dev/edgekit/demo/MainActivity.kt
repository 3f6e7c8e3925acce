package dev.edgekit.demo

import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.ScrollView
import android.widget.Switch
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.lifecycleScope
import dev.edgekit.core.SamplingParams
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File

/**
 * The chat screen. The bundle is read from the app's external files directory (push it with
 * `adb push BUNDLE /sdcard/Android/data/dev.edgekit.demo/files/bundle`) or from the path in the intent extra
 * "bundle". The NNAPI switch re-opens the sessions; generation runs off the main thread and streams.
 */
class MainActivity : AppCompatActivity() {
    private var engine: ChatEngine? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val status = findViewById<TextView>(R.id.status)
        val transcript = findViewById<TextView>(R.id.transcript)
        val scroll = findViewById<ScrollView>(R.id.scroll)
        val input = findViewById<EditText>(R.id.input)
        val send = findViewById<Button>(R.id.send)
        val nnapi = findViewById<Switch>(R.id.nnapi)
        val dir = intent.getStringExtra("bundle")?.let { File(it) } ?: File(getExternalFilesDir(null), "bundle")

        fun load(useNnapi: Boolean) {
            send.isEnabled = false
            status.text = "loading ${dir.path}"
            lifecycleScope.launch {
                val result = withContext(Dispatchers.Default) {
                    try {
                        engine?.close()
                        val e = ChatEngine(dir, useNnapi)
                        engine = e
                        "${e.bundle.json.getJSONObject("model").getString("name")} · ${e.provider}"
                    } catch (t: Throwable) {
                        engine = null
                        "cannot load the bundle: ${t.message}"
                    }
                }
                status.text = result
                send.isEnabled = engine != null
            }
        }

        nnapi.isChecked = true
        nnapi.setOnCheckedChangeListener { _, checked -> load(checked) }
        load(nnapi.isChecked)

        send.setOnClickListener {
            val e = engine ?: return@setOnClickListener
            val text = input.text.toString().trim()
            if (text.isEmpty()) return@setOnClickListener
            input.setText("")
            send.isEnabled = false
            transcript.append("\n> $text\n")
            val params = SamplingParams.from(e.bundle.sampling)
            lifecycleScope.launch {
                withContext(Dispatchers.Default) {
                    e.ask(text, params) { piece ->
                        runOnUiThread { transcript.append(piece); scroll.post { scroll.fullScroll(ScrollView.FOCUS_DOWN) } }
                    }
                }
                transcript.append("\n")
                send.isEnabled = true
            }
        }
    }

    override fun onDestroy() {
        engine?.close()
        super.onDestroy()
    }
}
