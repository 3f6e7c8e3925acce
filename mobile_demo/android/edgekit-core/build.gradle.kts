// Plain Kotlin/JVM: no Android classes, so the logic is tested without a device. The sources stay within
// Kotlin 1.3 so Debian's kotlinc 1.3.31 also compiles them (tests/test_package_kotlin.py).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

java {
    toolchain { languageVersion.set(JavaLanguageVersion.of(17)) }
}

dependencies {
    // org.json is part of Android itself; on the JVM the tests take the same API from Maven
    compileOnly("org.json:json:20240303")
    testImplementation("org.json:json:20240303")
    testImplementation("junit:junit:4.13.2")
}

val repo = rootProject.projectDir.resolve("../..")
val tokenizers = layout.buildDirectory.dir("tokenizers")

// tokenizer.json per vectors file: edgekit-tiny's from the repo; others from -Pedgekit.tokenizers=DIR
val copyTokenizers by tasks.registering(Copy::class) {
    from(repo.resolve("edgekit/data/tiny/tokenizer.json"))
    into(tokenizers.map { it.dir("edgekit-tiny") })
}

tasks.test {
    dependsOn(copyTokenizers)
    systemProperty("edgekit.vectors", repo.resolve("mobile_demo/vectors").path)
    systemProperty("edgekit.tokenizers",
        (project.findProperty("edgekit.tokenizers") as String?) ?: tokenizers.get().asFile.path)
    testLogging { events("passed", "skipped", "failed"); showStandardStreams = true }
}
