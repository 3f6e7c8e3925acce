import SwiftUI

@main
struct EdgekitChatApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}
