// The edgekit Android demo: `edgekit-core` is plain Kotlin/JVM (tokenizer, chat format, sampler, KV-cache loop),
// tested on any JVM over mobile_demo/vectors; `app` is the Android UI on onnxruntime-android.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "edgekit-android"
include(":edgekit-core", ":app")
