import SwiftUI

struct ContentView: View {
    @StateObject private var chat = ChatModel()
    @State private var input = ""

    var body: some View {
        VStack(alignment: .leading, spacing: 8) {
            HStack {
                Text(chat.status).font(.caption).lineLimit(2)
                Spacer()
                Toggle("ANE/GPU", isOn: $chat.useAccelerators)
                    .toggleStyle(.switch).fixedSize()
                    .onChange(of: chat.useAccelerators) { chat.load() }
            }
            ScrollViewReader { proxy in
                ScrollView {
                    Text(chat.transcript).frame(maxWidth: .infinity, alignment: .leading).textSelection(.enabled).id("end")
                }
                .onChange(of: chat.transcript) { proxy.scrollTo("end", anchor: .bottom) }
            }
            HStack {
                TextField("Message", text: $input, axis: .vertical).textFieldStyle(.roundedBorder)
                Button("Send") {
                    let text = input.trimmingCharacters(in: .whitespacesAndNewlines)
                    guard !text.isEmpty else { return }
                    input = ""
                    chat.send(text)
                }.disabled(chat.busy)
            }
        }
        .padding()
        .onAppear { chat.load() }
    }
}
